//! Presence: one CRDT per topic ([`state`]), and the hub that applies track/untrack and
//! fans out the resulting `presence_diff`s.
//!
//! Every change to a topic's presence and the publication of its diff happen under that
//! topic's shard lock, and so does a join's subscribe + `presence_state`: a client sees
//! the state, then exactly the diffs that came after it, in order.

pub mod handler;
pub mod phx_ref;
pub mod state;

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::{AHashMap, RandomState};
use realtime_protocol::encode;
use serde_json::{Map, Value};

use crate::fanout::{ChannelId, Registry, Subscriber, TopicKey};
use state::{Diff, PhxRefGen, ReplicaId, TopicPresence};

const SHARDS: usize = 64;

/// All topics' presence on this node.
pub struct PresenceHub {
    shards: Box<[Mutex<AHashMap<TopicKey, TopicPresence>>]>,
    hasher: RandomState,
    replica: ReplicaId,
    refs: PhxRefGen,
}

impl PresenceHub {
    /// A hub for this node (`replica` identifies the node once presence is replicated).
    pub fn new(replica: ReplicaId) -> PresenceHub {
        PresenceHub {
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            hasher: RandomState::new(),
            replica,
            refs: PhxRefGen::new(),
        }
    }

    fn shard(&self, key: &TopicKey) -> &Mutex<AHashMap<TopicKey, TopicPresence>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Subscribes a channel to its topic. With `state_join_ref` (presence enabled at
    /// join) the channel also gets `presence_state`, with no diff lost or duplicated
    /// around it.
    pub fn join(&self, registry: &Registry, key: &TopicKey, sub: Subscriber, state_join_ref: Option<&str>) {
        let Ok(shard) = self.shard(key).lock() else {
            return;
        };
        if let Some(join_ref) = state_join_ref {
            let state = shard
                .get(key)
                .map_or_else(|| "{}".to_owned(), TopicPresence::state_json);
            let frame = encode::push(sub.vsn, Some(join_ref), &key.topic, "presence_state", state.as_bytes());
            sub.outbox.push(frame);
            crate::observability::metrics::out(crate::observability::metrics::Out::PresenceState, 1);
        }
        registry.subscribe(key, sub);
    }

    /// Unsubscribes a channel and removes its presence (leave, close, dead socket).
    pub fn leave(&self, registry: &Registry, key: &TopicKey, channel: ChannelId) {
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        registry.unsubscribe(key, channel);
        if let Some(topic) = shard.get_mut(key) {
            let diff = topic.untrack(channel);
            if topic.is_empty() {
                shard.remove(key);
            }
            publish(registry, key, diff);
        }
    }

    /// Tracked presences (metas) over all topics (for `/metrics`; locks each shard briefly).
    pub fn key_count(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|m| m.values().map(TopicPresence::len).sum::<usize>()))
            .sum()
    }

    /// Tracks (or updates) a channel's presence under `presence_key`.
    pub fn track(
        &self,
        registry: &Registry,
        key: &TopicKey,
        channel: ChannelId,
        presence_key: &str,
        payload: Map<String, Value>,
    ) {
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        let phx_ref = self.refs.next(now_nanos());
        let topic = shard
            .entry(key.clone())
            .or_insert_with(|| TopicPresence::starting_at(self.replica, now_nanos()));
        let diff = topic.track(channel, presence_key, payload, phx_ref);
        publish(registry, key, diff);
    }

    /// Removes a channel's presence; the channel stays subscribed.
    pub fn untrack(&self, registry: &Registry, key: &TopicKey, channel: ChannelId) {
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        if let Some(topic) = shard.get_mut(key) {
            let diff = topic.untrack(channel);
            if topic.is_empty() {
                shard.remove(key);
            }
            publish(registry, key, diff);
        }
    }
}

fn publish(registry: &Registry, key: &TopicKey, diff: Option<Diff>) {
    if let Some(diff) = diff.filter(|d| !d.is_empty()) {
        registry.presence_diff(key, diff.to_json().as_bytes());
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
