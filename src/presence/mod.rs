//! Presence: one CRDT per topic ([`state`]), and the hub that applies track/untrack and
//! fans out the resulting `presence_diff`s.
//!
//! Diffs are coalesced per topic: a change is merged into the topic's pending diff and a
//! flush is queued; the flusher task ([`run_flusher`]) sends whatever has accumulated as
//! one `presence_diff`. A quiet topic's diff goes out at once; when a thousand members
//! track together, each member gets a few merged diffs instead of a thousand frames
//! (clients apply a merged diff exactly as the sequence it replaces).
//!
//! Every change, every flush, and a join's flush + `presence_state` + subscribe happen
//! under the topic's shard lock: a client sees the state, then exactly the diffs that
//! came after it, in order.
//!
//! In a cluster each node is a replica of every topic's CRDT: a flush also hands this
//! node's changes since the last flush to the publish path
//! ([`Publisher::presence_changes`]), and the changes other nodes made arrive through
//! [`PresenceHub::merge_remote`] and reach members as ordinary diffs.

pub mod handler;
pub mod last_seen;
pub mod phx_ref;
pub mod server;
pub mod state;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::{AHashMap, RandomState};
use realtime_protocol::encode;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::fanout::{ChannelId, Subscriber, TopicKey};
use crate::publish::Publisher;
use last_seen::LastSeen;
use server::{Owners, ServerEntries};
use state::{Diff, FullState, LocalChanges, MergeOutcome, PhxRefGen, ReplicaId, TopicPresence};

const SHARDS: usize = 64;

/// One topic's presence and what its subscribers have not been sent yet.
struct Topic {
    presence: TopicPresence,
    /// Changes since the last `presence_diff`, merged.
    pending: Diff,
    /// A flush of this topic is queued for the flusher.
    queued: bool,
    /// This node's changes up to this clock were handed to the publish path.
    shipped: u64,
    /// `presence_state` as last rendered, until the next change: joins and the REST
    /// API on a large, quiet roster render it once (10,000 metas take milliseconds).
    state: Option<Arc<str>>,
}

impl Topic {
    /// Sends the pending diff (if any) to the topic's members; a queued flush then finds
    /// nothing to do.
    fn send_pending(&mut self, publish: &Publisher, key: &TopicKey) {
        self.queued = false;
        let diff = std::mem::take(&mut self.pending);
        if !diff.is_empty() {
            publish.presence_diff(key, diff.to_json().as_bytes());
        }
        if publish.replicates_presence() && self.presence.clock() > self.shipped {
            let changes = self.presence.local_delta(self.shipped);
            self.shipped = self.presence.clock();
            publish.presence_changes(key, &changes);
        }
    }

    /// The `presence_state` payload, rendered at most once per change.
    fn state_json(&mut self) -> Arc<str> {
        match &self.state {
            Some(state) => state.clone(),
            None => {
                let state: Arc<str> = self.presence.state_json().into();
                self.state = Some(state.clone());
                state
            }
        }
    }

    fn new(replica: ReplicaId) -> Topic {
        let presence = TopicPresence::starting_at(replica, now_nanos());
        Topic {
            shipped: presence.clock(),
            presence,
            pending: Diff::default(),
            queued: false,
            state: None,
        }
    }
}

type Shard = AHashMap<TopicKey, Topic>;

/// All topics' presence on this node.
pub struct PresenceHub {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    replica: ReplicaId,
    refs: PhxRefGen,
    /// Topics with a pending diff, for the flusher.
    flushes: mpsc::UnboundedSender<TopicKey>,
    flush_queue: Mutex<Option<mpsc::UnboundedReceiver<TopicKey>>>,
    /// Last leave per key, for the REST presence API.
    last_seen: LastSeen,
    /// Entries set through the REST API. Locked before a presence shard, never after.
    server: Mutex<ServerEntries>,
    server_owners: Owners,
    /// Told of this node's own presence changes (webhooks).
    webhooks: std::sync::OnceLock<Arc<crate::webhooks::Webhooks>>,
}

/// A topic's presence as the REST API shows it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The `presence_state` payload: `{KEY:{"metas":[...]}}`.
    pub online_json: Arc<str>,
    /// Keys that left within the last-seen window and are not online, with the Unix
    /// time in ms of their leave, in key order.
    pub last_seen: Vec<(String, u64)>,
}

/// Sends the pending diffs of the topics queued by [`PresenceHub`]; runs for the life of
/// the server.
pub async fn run_flusher(hub: std::sync::Arc<PresenceHub>, publish: std::sync::Arc<Publisher>) {
    let Some(mut queue) = crate::sync::lock(&hub.flush_queue, "presence flush queue").take() else {
        tracing::error!("presence flusher started twice");
        return;
    };
    let mut keys = Vec::new();
    while queue.recv_many(&mut keys, 256).await > 0 {
        // Let the changes that are arriving together land first (a few hundred
        // microseconds at most on a busy server, nothing on a quiet one).
        tokio::task::yield_now().await;
        for key in keys.drain(..) {
            hub.flush(&publish, &key);
        }
    }
}

/// Makes server-set entries leave at their TTL (checked every 250 ms, so an entry
/// leaves at most that late) and forgets old last-seen times once a minute; runs for the
/// life of the server.
pub async fn run_expiry(hub: std::sync::Arc<PresenceHub>, publish: std::sync::Arc<Publisher>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let left = hub.expire_server(&publish, now_millis());
        if left > 0 {
            tracing::debug!(left, "server-set presence expired");
        }
        if ticks.is_multiple_of(240) {
            hub.sweep_last_seen();
        }
    }
}

impl PresenceHub {
    /// A hub for this node (`replica` identifies the node once presence is replicated).
    pub fn new(replica: ReplicaId) -> PresenceHub {
        let (flushes, queue) = mpsc::unbounded_channel();
        PresenceHub {
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            hasher: RandomState::new(),
            replica,
            refs: PhxRefGen::new(),
            flushes,
            flush_queue: Mutex::new(Some(queue)),
            last_seen: LastSeen::new(3_600_000),
            server: Mutex::new(ServerEntries::default()),
            server_owners: Owners::new(),
            webhooks: std::sync::OnceLock::new(),
        }
    }

    /// Reports this node's own presence joins and leaves (its sockets' and its
    /// server-set entries', not other nodes') to `webhooks` (set once, at start).
    pub fn observe(&self, webhooks: Arc<crate::webhooks::Webhooks>) {
        let _ = self.webhooks.set(webhooks);
    }

    /// Tells the webhooks of a local change.
    fn observed(&self, key: &TopicKey, diff: &Option<Diff>) {
        if let (Some(w), Some(diff)) = (self.webhooks.get(), diff) {
            w.presence(key, diff);
        }
    }

    /// Remembers leaves for `last_seen` this long (default one hour).
    pub fn with_last_seen_window(mut self, window: std::time::Duration) -> PresenceHub {
        self.last_seen = LastSeen::new(window.as_millis() as u64);
        self
    }

    fn shard(&self, key: &TopicKey) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Merges a change into the topic's pending diff and queues a flush; a topic left
    /// empty is flushed and forgotten at once.
    fn changed(&self, shard: &mut Shard, publish: &Publisher, key: &TopicKey, diff: Option<Diff>) {
        let Some(topic) = shard.get_mut(key) else {
            return;
        };
        // Every change reaches here, so the rendered state is dropped here alone.
        topic.state = None;
        if let Some(diff) = diff {
            if !diff.leaves.is_empty() {
                self.last_seen
                    .left(key, diff.leaves.iter().map(|(k, _)| k.as_str()), now_millis());
            }
            topic.pending.absorb(diff);
        }
        if topic.presence.is_empty() {
            topic.send_pending(publish, key);
            shard.remove(key);
        } else if !topic.queued && !topic.pending.is_empty() {
            topic.queued = true;
            if self.flushes.send(key.clone()).is_err() {
                tracing::error!(topic = %key.topic, "presence flusher is gone: sending the diff inline");
                topic.send_pending(publish, key);
            }
        }
    }

    /// Sends a topic's pending diff.
    fn flush(&self, publish: &Publisher, key: &TopicKey) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        if let Some(topic) = shard.get_mut(key) {
            topic.send_pending(publish, key);
        }
    }

    /// Subscribes a channel to its topic. With `state_join_ref` (presence enabled at
    /// join) the channel also gets `presence_state`, with no diff lost or duplicated
    /// around it.
    pub fn join(&self, publish: &Publisher, key: &TopicKey, sub: Subscriber, state_join_ref: Option<&str>) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        // Members must get what is pending before the newcomer's state includes it.
        if let Some(topic) = shard.get_mut(key) {
            topic.send_pending(publish, key);
        }
        if let Some(join_ref) = state_join_ref {
            let state = shard.get_mut(key).map_or_else(|| Arc::from("{}"), |t| t.state_json());
            let frame = encode::push(sub.vsn, Some(join_ref), &key.topic, "presence_state", state.as_bytes());
            sub.outbox.push(frame);
            crate::observability::metrics::out(crate::observability::metrics::Out::PresenceState, 1);
        }
        publish.subscribe(key, sub);
    }

    /// Unsubscribes a channel and removes its presence (leave, close, dead socket).
    pub fn leave(&self, publish: &Publisher, key: &TopicKey, channel: ChannelId) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        let diff = shard.get_mut(key).and_then(|t| t.presence.untrack(channel));
        // The presence leave is observed before the topic may be vacated (webhook order);
        // the diff itself goes out in `changed`, after the channel is unsubscribed.
        self.observed(key, &diff);
        publish.unsubscribe(key, channel);
        self.changed(&mut shard, publish, key, diff);
    }

    /// Tracked presences (metas) over all topics (for `/metrics`; locks each shard briefly).
    pub fn key_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                crate::sync::lock(s, "presence shard")
                    .values()
                    .map(|t| t.presence.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Tracks (or updates) a channel's presence under `presence_key`.
    pub fn track(
        &self,
        publish: &Publisher,
        key: &TopicKey,
        channel: ChannelId,
        presence_key: &str,
        payload: Map<String, Value>,
    ) {
        let phx_ref = self.refs.next(now_nanos());
        self.track_as(publish, key, channel, presence_key, payload, phx_ref, true);
    }

    /// Tracks with a given `phx_ref`; `observe`: tell the webhooks (false for a server
    /// entry taken over from a dead node, which did not really leave and join).
    #[allow(clippy::too_many_arguments)]
    fn track_as(
        &self,
        publish: &Publisher,
        key: &TopicKey,
        channel: ChannelId,
        presence_key: &str,
        payload: Map<String, Value>,
        phx_ref: String,
        observe: bool,
    ) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        let topic = shard.entry(key.clone()).or_insert_with(|| Topic::new(self.replica));
        let diff = topic.presence.track(channel, presence_key, payload, phx_ref);
        if observe {
            self.observed(key, &diff);
        }
        self.changed(&mut shard, publish, key, diff);
    }

    /// A topic's presence and recent leaves (the REST presence API).
    ///
    /// In a cluster, server-set entries that this node's replica does not hold (it does
    /// not follow the topic) are added from the replicated records, so every node lists
    /// them.
    pub fn snapshot(&self, key: &TopicKey) -> Snapshot {
        let records = self.server_records(key);
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        let Some(topic) = shard.get_mut(key) else {
            let online: Vec<_> = records.iter().collect();
            return Snapshot {
                online_json: server::with_records("{}", &online),
                last_seen: self
                    .last_seen
                    .recent(key, now_millis(), |k| online.iter().any(|(p, _)| p == k)),
            };
        };
        let missing: Vec<_> = records.iter().filter(|(k, _)| !topic.presence.has_key(k)).collect();
        let online_json = match missing.is_empty() {
            true => topic.state_json(),
            false => server::with_records(&topic.state_json(), &missing),
        };
        let last_seen = self.last_seen.recent(key, now_millis(), |k| {
            topic.presence.has_key(k) || missing.iter().any(|(p, _)| p == k)
        });
        Snapshot { online_json, last_seen }
    }

    /// Number of distinct presence keys of a topic.
    pub fn key_count_of(&self, key: &TopicKey) -> usize {
        let shard = crate::sync::lock(self.shard(key), "presence shard");
        shard.get(key).map_or(0, |t| t.presence.key_count())
    }

    /// Topics with presence on this node (local or replicated) that `keep` selects.
    pub fn topics(&self, keep: impl Fn(&TopicKey) -> bool) -> Vec<TopicKey> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = crate::sync::lock(shard, "presence shard");
            out.extend(shard.keys().filter(|k| keep(k)).cloned());
        }
        out
    }

    /// Forgets last-seen times older than the window.
    pub fn sweep_last_seen(&self) {
        self.last_seen.sweep(now_millis());
    }

    /// This node's replica id.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Applies another node's changes to a topic; their diff reaches this node's members
    /// like a local one. Returns the replica to ask for a full state when a delta of it
    /// was lost.
    pub fn merge_remote(&self, publish: &Publisher, key: &TopicKey, changes: LocalChanges) -> Option<ReplicaId> {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        let topic = shard.entry(key.clone()).or_insert_with(|| Topic::new(self.replica));
        match topic.presence.merge(changes) {
            MergeOutcome::Applied(diff) => {
                self.changed(&mut shard, publish, key, Some(diff));
                None
            }
            MergeOutcome::Stale => {
                self.changed(&mut shard, publish, key, None);
                None
            }
            MergeOutcome::NeedFullSync(replica) => {
                self.changed(&mut shard, publish, key, None);
                Some(replica)
            }
        }
    }

    /// This node's own entries of a topic, for a node that asked (empty when it has none).
    pub fn full_state(&self, key: &TopicKey) -> FullState {
        let shard = crate::sync::lock(self.shard(key), "presence shard");
        match shard.get(key) {
            Some(topic) => topic.presence.full_state(),
            None => TopicPresence::starting_at(self.replica, now_nanos()).full_state(),
        }
    }

    /// A node is gone: its entries leave every topic. Returns the leaves, by topic (for
    /// the webhooks of the topics this node reports).
    pub fn remove_replica(&self, publish: &Publisher, replica: ReplicaId) -> Vec<(TopicKey, Diff)> {
        let mut left = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = crate::sync::lock(shard, "presence shard");
            let keys: Vec<TopicKey> = shard.keys().cloned().collect();
            for key in keys {
                let diff = shard.get_mut(&key).map(|t| t.presence.remove_replica(replica));
                if let Some(diff) = diff.as_ref().filter(|d| !d.is_empty()) {
                    left.push((key.clone(), diff.clone()));
                }
                self.changed(&mut shard, publish, &key, diff);
            }
        }
        left
    }

    /// Reports a dead node's leaves to the webhooks (this node reports the topic).
    pub fn report_leaves(&self, key: &TopicKey, diff: &Diff) {
        self.observed(key, &Some(diff.clone()));
    }

    /// This node no longer follows a topic (no members left here): what it knew of other
    /// nodes' presence there is dropped, as it will not hear of changes any more.
    pub fn forget(&self, key: &TopicKey) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        if shard.get(key).is_some_and(|t| t.presence.local_len() == 0) {
            shard.remove(key);
        }
    }

    /// Removes a channel's presence; the channel stays subscribed.
    pub fn untrack(&self, publish: &Publisher, key: &TopicKey, channel: ChannelId) {
        self.untrack_as(publish, key, channel, true);
    }

    /// Removes an owner's presence; `observe`: tell the webhooks.
    fn untrack_as(&self, publish: &Publisher, key: &TopicKey, channel: ChannelId, observe: bool) {
        let mut shard = crate::sync::lock(self.shard(key), "presence shard");
        let diff = shard.get_mut(key).and_then(|t| t.presence.untrack(channel));
        if observe {
            self.observed(key, &diff);
        }
        self.changed(&mut shard, publish, key, diff);
    }
}

/// Unix time in ms (0 before 1970).
pub fn now_millis() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
