//! Several nodes acting as one server, coordinated through an engine (Redis or Valkey;
//! `CLUSTER_URL`). [`ClusterBroker`] is the [`Broker`] of a clustered node:
//!
//! * **Broadcast**: a message published here is delivered to this node's members at once,
//!   as on a single node, and handed to the engine once as an [`envelope`]; every other
//!   node with members on that topic delivers it to its own (encoding once per wire
//!   version, as for a local message).
//! * **Presence**: every node is a replica of each topic's CRDT
//!   ([`crate::presence::state`]). A node ships its own changes as deltas on the topic's
//!   channel; a node that sees a gap asks the one it missed for a full state; a node that
//!   starts following a topic asks every node on it and waits (briefly) for their answers
//!   before the join replies, so a late joiner's `presence_state` is complete.
//! * **Liveness** ([`liveness`]): heartbeats on the node channel; the presence of a node
//!   not heard from for 4 s leaves every topic here.
//! * **Interest**: a node subscribes to a topic's channel only while it has members there,
//!   and drops the subscription [`Settings::unsubscribe_delay`] after the last one leaves.
//! * **Engine loss**: each node keeps serving its own members; when the link is back,
//!   every followed topic's presence is exchanged again.
//!
//! * **Row changes** (Postgres Changes and Broadcast from Database): one node, the leader
//!   ([`leader`]: a PostgreSQL advisory lock), streams each slot once. Broadcast from
//!   Database rows become broadcasts and cross like any other; Postgres Changes batches are
//!   relayed ([`rows`]) and every node applies filters and RLS for its own subscribers.
//!   The leader also relays its streams' states, so `Subscribed to PostgreSQL`,
//!   `replication_ready` and `/api/health` mean the same on every node. After a failover
//!   the new leader resumes from the slots' confirmed positions; each node delivers a
//!   change once ([`rows::Dedupe`]). Relayed batches are numbered; a follower that
//!   missed some (an engine outage) asks the leader, which keeps them a while
//!   ([`sequence`]).
//!
//! * **Public replay history** (`REPLAY_PUBLIC`): kept in the engine, per topic (a Redis
//!   stream; a JetStream subject on NATS), appended in the same round trip as the
//!   message's publish; a replaying join on any node reads it there, so it outlives the
//!   node a message was published on. Each node also keeps in memory what it published
//!   and received: a join reads the engine's history once it follows the topic, then takes
//!   this node's memory under the topic's publish lock and merges both by id, so each
//!   message is replayed or delivered live, and a message also in what the join read is
//!   not delivered again (its id is among the replayed ones). With the engine down, a join
//!   replays this node's memory only. On a NATS server without JetStream, a join asks
//!   every node for its memory history instead ([`history`]).

pub mod engine;
pub mod envelope;
pub mod history;
pub mod jetstream;
pub mod leader;
pub mod liveness;
pub mod nats;
pub mod occupancy;
pub mod redis;
pub mod reporting;
pub mod rows;
pub mod sequence;
pub mod server_presence;
pub mod state_wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use self::engine::{Engine, HistorySettings, Incoming};
use self::envelope::{Body, Envelope};
use self::liveness::Nodes;
use self::rows::{Dedupe, Offsets, Relayed};
use self::sequence::{Sent, Sequencer, Step};
use crate::fanout::{Registry, TopicKey};
use crate::observability::state::{StreamState, DB_BROADCAST, PG_CHANGES};
use crate::presence::state::LocalChanges;
use crate::presence::PresenceHub;
use crate::publish::broker::{Broker, Delivery, HistoryFetch, Local, Message};
use crate::publish::history::{Stored, StoredBody};
use crate::publish::Publisher;
use crate::replication::Batch;

/// How long a join waits for the engine to confirm its topic's subscription before it
/// goes ahead without (the engine is down: the member gets this node's messages only).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How long a node that starts following a topic waits for the other nodes' presence.
const SYNC_WAIT: Duration = Duration::from_secs(1);

/// Cluster settings (`CLUSTER_URL`, `NODE_ID`, `CLUSTER_NAMESPACE`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://host:port[/db]`, `rediss://…` or `nats://host:port`.
    pub url: String,
    /// This node's name in logs and `/api/health`.
    pub node_id: String,
    /// Prefix of every engine channel, so several clusters can share one engine.
    pub namespace: String,
    /// How long a topic's subscription outlives its last local member.
    pub unsubscribe_delay: Duration,
    /// With `REPLAY_PUBLIC`: how long the engine keeps an idle topic's public history
    /// (`MESSAGES_RETENTION_HOURS`; zero: until newer messages push it out).
    pub history_retention: Option<Duration>,
}

/// A topic's engine subscription, as this node wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// Has local members.
    Members,
    /// No local members since the change numbered so: dropped after the delay unless a
    /// later change happened.
    Idle(u64),
}

#[derive(Default)]
struct Interests {
    changes: u64,
    /// Keyed by the topic (its name shared with the registry); the engine channel's name
    /// is derived when needed, not kept.
    by_key: AHashMap<TopicKey, Interest>,
}

/// This node's presence, attached once the hub and the publish path exist.
struct Attached {
    hub: Arc<PresenceHub>,
    publish: Weak<Publisher>,
}

/// A join waiting for other nodes' full states of its topic: who answered, and a counter
/// the join watches.
struct SyncWait {
    answered: AHashSet<u64>,
    count: watch::Sender<usize>,
}

/// The leader's side of the relay.
struct Relaying {
    offsets: Offsets,
    sent: Sent,
}

/// The broker of a clustered node.
pub struct ClusterBroker {
    /// Itself, for the tasks it spawns.
    this: Weak<ClusterBroker>,
    local: Local,
    registry: Arc<Registry>,
    engine: Arc<dyn Engine>,
    /// This process' incarnation, also its presence replica id: its own envelopes come
    /// back from the engine and are recognised by it.
    origin: u64,
    node_id: String,
    namespace: String,
    unsubscribe_delay: Duration,
    /// Wanted engine channels. Changes are sent to the engine under this lock, so their
    /// order there is the order decided here.
    interest: Mutex<Interests>,
    nodes: Mutex<Nodes>,
    presence: OnceLock<Attached>,
    syncs: Mutex<AHashMap<TopicKey, SyncWait>>,
    /// This node holds the replication lease.
    leader: AtomicBool,
    /// What this node relayed as leader: its transactions' offsets, and the numbered
    /// batches kept for followers that missed them.
    relaying: Mutex<Relaying>,
    /// The order of the batches relayed to this node as follower.
    sequencer: Mutex<Sequencer>,
    /// What this node delivered of the row changes, whoever streamed them.
    delivered: Mutex<Dedupe>,
    /// Relayed batches, delivered in order by one task.
    relay: mpsc::UnboundedSender<Relayed>,
    /// Table shapes last seen in relayed changes, by relation id.
    relations: Mutex<AHashMap<u32, Arc<realtime_wal::change::Relation>>>,
    /// When the leader last said how its streams are.
    leader_heard: Mutex<Option<tokio::time::Instant>>,
    /// When this node joined the cluster (other nodes are known after their heartbeats).
    started: tokio::time::Instant,
    /// This node has said (in a heartbeat) that it reports: see [`liveness::READY_AFTER`].
    ready: AtomicBool,
    /// Replaying joins waiting for the other nodes' public histories.
    histories: Mutex<history::Waits>,
    /// Cluster-wide occupancy and what this node follows for it ([`reporting`]).
    reporting: Mutex<reporting::State>,
    /// Where `channel.*` and dead nodes' presence leaves are reported.
    webhooks: OnceLock<Arc<crate::webhooks::Webhooks>>,
}

/// Starts a clustered node's broker over `local` (this node's delivery); `origin` is this
/// node's presence replica id.
pub fn start(
    settings: &Settings,
    registry: Arc<Registry>,
    local: Local,
    origin: u64,
) -> Result<Arc<ClusterBroker>, String> {
    let history = settings.history_retention.map(|retention| HistorySettings {
        namespace: settings.namespace.clone(),
        retention,
    });
    let (engine, incoming): (Arc<dyn Engine>, mpsc::Receiver<Incoming>) = match settings.url.split_once("://") {
        Some(("redis" | "rediss", _)) => {
            let (redis, incoming) = redis::Redis::start(&settings.url, history.as_ref())?;
            (Arc::new(redis), incoming)
        }
        Some(("nats", _)) => {
            let (nats, incoming) = nats::Nats::start(&settings.url, history.as_ref())?;
            (Arc::new(nats), incoming)
        }
        _ => {
            return Err(format!(
                "CLUSTER_URL: expected redis://…, rediss://… or nats://…, got {:?}",
                settings.url
            ))
        }
    };
    let (relay, relayed) = mpsc::unbounded_channel();
    let broker = Arc::new_cyclic(|this| ClusterBroker {
        this: this.clone(),
        local,
        registry,
        engine,
        origin,
        node_id: settings.node_id.clone(),
        namespace: settings.namespace.clone(),
        unsubscribe_delay: settings.unsubscribe_delay,
        interest: Mutex::new(Interests::default()),
        nodes: Mutex::new(Nodes::default()),
        presence: OnceLock::new(),
        syncs: Mutex::new(AHashMap::new()),
        histories: Mutex::new(history::Waits::default()),
        leader: AtomicBool::new(false),
        relaying: Mutex::new(Relaying {
            offsets: Offsets::default(),
            sent: Sent::new(sequence::KEEP_BYTES),
        }),
        sequencer: Mutex::new(Sequencer::default()),
        delivered: Mutex::new(Dedupe::default()),
        relay,
        relations: Mutex::new(AHashMap::new()),
        leader_heard: Mutex::new(None),
        started: tokio::time::Instant::now(),
        ready: AtomicBool::new(false),
        reporting: Mutex::new(reporting::State::default()),
        webhooks: OnceLock::new(),
    });
    info!(node_id = %broker.node_id, engine = broker.engine.name(), namespace = %broker.namespace, "cluster mode");
    let nodes_subscribed = broker.engine.subscribe(&broker.nodes_channel());
    drop(broker.engine.subscribe(&broker.changes_channel()));
    tokio::spawn(receive(Arc::downgrade(&broker), incoming));
    tokio::spawn(deliver_relayed(Arc::downgrade(&broker), relayed));
    tokio::spawn(heartbeat(Arc::downgrade(&broker), nodes_subscribed));
    Ok(broker)
}

/// Delivers what other nodes sent to this node's members.
async fn receive(broker: Weak<ClusterBroker>, mut incoming: mpsc::Receiver<Incoming>) {
    while let Some(item) = incoming.recv().await {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        match item {
            Incoming::Message(bytes) => broker.deliver_remote(&bytes),
            Incoming::Resubscribed => {
                broker.resync_all();
                broker.send_state(true);
                broker.changes_resubscribed();
            }
        }
    }
}

/// Delivers relayed row changes to this node's subscribers, one batch after the other.
async fn deliver_relayed(broker: Weak<ClusterBroker>, mut relayed: mpsc::UnboundedReceiver<Relayed>) {
    while let Some(Relayed { batch, offsets }) = relayed.recv().await {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.relation_shapes(&batch);
        broker.deliver_changes(&batch, &offsets).await;
    }
}

/// Says this node is alive, and lets the presence of silent nodes go. Starts once the
/// nodes' channel is subscribed (or after [`SUBSCRIBE_WAIT`]), so the states other nodes
/// send on hearing this one are not missed.
async fn heartbeat(broker: Weak<ClusterBroker>, nodes_subscribed: oneshot::Receiver<()>) {
    let _ = tokio::time::timeout(SUBSCRIBE_WAIT, nodes_subscribed).await;
    let mut tick = tokio::time::interval(liveness::HEARTBEAT / 4);
    let mut beats = 0u64;
    let mut was_ready = false;
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        // This node counts itself a reporting candidate from the heartbeat that says so,
        // sent at once rather than at the next beat: the others agree within the engine's
        // latency instead of up to a beat later (a window of duplicate `channel.*`).
        let becomes_ready = !was_ready && broker.started.elapsed() >= liveness::READY_AFTER;
        if beats.is_multiple_of(4) || becomes_ready {
            let sent = tokio::time::Instant::now();
            if becomes_ready {
                was_ready = true;
                broker.ready.store(true, Ordering::Relaxed);
            }
            broker.engine.publish(
                broker.nodes_channel(),
                envelope::encode_heartbeat(broker.origin, was_ready),
            );
            if becomes_ready {
                info!("cluster: this node now reports for the topics it ranks first for");
                broker.membership_changed();
            }
            broker.tidy_server_follows();
            // The heartbeat doubles as the engine's round-trip probe; timed off this task
            // so a stalled engine does not delay the next beat.
            let handed = broker.engine.handed_over();
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(liveness::NODE_TIMEOUT, handed).await {
                    crate::observability::metrics::cluster_roundtrip(sent.elapsed());
                }
            });
        }
        beats += 1;
        broker.leader_tick(beats.is_multiple_of(4));
        let gone = crate::sync::lock(&broker.nodes, "cluster nodes").expire(tokio::time::Instant::now());
        for node in gone {
            info!(
                node = format_args!("{node:016x}"),
                "cluster: node silent for 4 s; its presence leaves"
            );
            broker.node_gone(node);
        }
    }
}

impl ClusterBroker {
    /// Attaches this node's presence, so that it is replicated.
    pub fn attach_presence(&self, hub: Arc<PresenceHub>, publish: &Arc<Publisher>) {
        let attached = Attached {
            hub,
            publish: Arc::downgrade(publish),
        };
        if self.presence.set(attached).is_err() {
            warn!("cluster presence attached twice; keeping the first");
        }
    }

    fn attached(&self) -> Option<(&PresenceHub, Arc<Publisher>)> {
        let a = self.presence.get()?;
        Some((&a.hub, a.publish.upgrade()?))
    }

    /// This node took or lost the replication lease.
    pub fn set_leader(&self, leader: bool) {
        if leader {
            let mut relaying = crate::sync::lock(&self.relaying, "cluster relaying");
            relaying.offsets = Offsets::default();
            relaying.sent.start_term();
            drop(relaying);
            let held = crate::sync::lock(&self.sequencer, "cluster sequencer").leading();
            self.follow(Step {
                deliver: held,
                ask: None,
            });
        }
        self.leader.store(leader, Ordering::SeqCst);
    }

    /// This node holds the replication lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    fn changes_channel(&self) -> String {
        format!("{}:changes", self.namespace)
    }

    /// Each heartbeat tick: the leader says how its streams are (every second, so a new
    /// node learns it at once); a follower that has not heard from a leader for the node
    /// timeout counts the streams as down.
    fn leader_tick(&self, beat: bool) {
        if self.local.changes().is_none() {
            return;
        }
        if self.is_leader() {
            if beat {
                self.send_streams();
            }
            return;
        }
        let step = crate::sync::lock(&self.sequencer, "cluster sequencer").tick(std::time::Instant::now());
        self.follow(step);
        let heard = *crate::sync::lock(&self.leader_heard, "cluster leader");
        if heard.is_some_and(|at| at.elapsed() > liveness::NODE_TIMEOUT) {
            *crate::sync::lock(&self.leader_heard, "cluster leader") = None;
            warn!("cluster: no replication leader heard for 4 s; row changes are paused until one takes over");
            self.mirror_streams(StreamState::Down, StreamState::Down);
        }
    }

    /// The leader says how its streams are and which batches it keeps.
    fn send_streams(&self) {
        let span = crate::sync::lock(&self.relaying, "cluster relaying")
            .sent
            .span(std::time::Instant::now());
        let bytes = envelope::encode_streams(self.origin, PG_CHANGES.state(), DB_BROADCAST.state(), span);
        self.engine.publish(self.changes_channel(), bytes);
    }

    /// The engine link is back: the leader says at once what it sent meanwhile; a
    /// follower asks for what came after what it has.
    fn changes_resubscribed(&self) {
        if self.local.changes().is_none() {
            return;
        }
        if self.is_leader() {
            self.send_streams();
            return;
        }
        let ask = crate::sync::lock(&self.sequencer, "cluster sequencer").resubscribed();
        self.follow(Step {
            deliver: Vec::new(),
            ask,
        });
    }

    /// Hands a follower's ordered batches to delivery, and sends its request.
    fn follow(&self, step: Step) {
        for relayed in step.deliver {
            if self.relay.send(relayed).is_err() {
                warn!("cluster: row changes relay stopped");
            }
        }
        if let Some(ask) = step.ask {
            debug!(
                from = ask.from,
                to = ask.to,
                "cluster: asking the leader to resend row changes"
            );
            self.engine.publish(
                self.changes_channel(),
                envelope::encode_changes_request(self.origin, ask),
            );
        }
    }

    /// A follower asked this leader to resend batches.
    fn resend(&self, ask: sequence::Ask) {
        if ask.run.origin != self.origin || !self.is_leader() {
            return;
        }
        let relaying = crate::sync::lock(&self.relaying, "cluster relaying");
        let batches = relaying.sent.resend(ask.run.term, ask.from, ask.to);
        debug!(
            from = ask.from,
            to = ask.to,
            batches = batches.len(),
            "cluster: resending row changes"
        );
        // Under the lock, so that no new batch goes out between them and the span.
        for bytes in batches {
            if !self.engine.publish(self.changes_channel(), bytes) {
                crate::observability::metrics::cluster_dropped(1);
            }
        }
        drop(relaying);
        self.send_streams();
    }

    /// A follower shows the leader's stream states as its own.
    fn mirror_streams(&self, postgres_changes: StreamState, db_broadcast: StreamState) {
        PG_CHANGES.set(postgres_changes);
        DB_BROADCAST.set(db_broadcast);
        if let Some(consumer) = self.local.changes() {
            if postgres_changes == StreamState::Streaming {
                consumer.stream_up();
            } else {
                consumer.stream_down();
            }
        }
    }

    /// Tells this node's Postgres Changes when a relayed table's shape differs from the
    /// last one seen (the leader's stream saw a Relation message).
    fn relation_shapes(&self, batch: &Batch) {
        let Some(consumer) = self.local.changes() else {
            return;
        };
        let mut seen = crate::sync::lock(&self.relations, "cluster relations");
        for change in &batch.changes {
            let r = &change.relation;
            if seen
                .get(&r.id)
                .is_some_and(|known| Arc::ptr_eq(known, r) || **known == **r)
            {
                continue;
            }
            seen.insert(r.id, r.clone());
            consumer.relation_changed(r);
        }
    }

    /// The leader numbers a batch, keeps it for resending and hands it to the engine;
    /// returns its transactions' offsets.
    fn relay_changes(&self, batch: &Batch) -> Vec<usize> {
        let mut relaying = crate::sync::lock(&self.relaying, "cluster relaying");
        let offsets = relaying.offsets.of(batch);
        let numbered = relaying.sent.upcoming();
        let Some(bytes) = envelope::encode_changes(self.origin, numbered, batch, &offsets) else {
            warn!(changes = batch.changes.len(), "row changes too large to relay");
            return offsets;
        };
        relaying.sent.keep(numbered.1, bytes.clone(), std::time::Instant::now());
        // Under the lock: batches reach the engine in the order they are numbered.
        if !self.engine.publish(self.changes_channel(), bytes) {
            // Kept: followers ask for it once they see the hole.
            warn!(
                changes = batch.changes.len(),
                "cluster engine queue full: row changes not relayed now"
            );
            crate::observability::metrics::cluster_dropped(1);
        }
        drop(relaying);
        offsets
    }

    /// Delivers what this node has not delivered yet of a batch.
    async fn deliver_changes(&self, batch: &Batch, offsets: &[usize]) {
        let fresh = crate::sync::lock(&self.delivered, "cluster delivered").filter(batch, offsets);
        if !fresh.changes.is_empty() {
            self.local.publish_changes(&fresh).await;
        }
    }

    /// The engine channel of a topic: public and private topics of one name are distinct.
    fn channel(&self, key: &TopicKey) -> String {
        topic_name(&self.namespace, "topic", key)
    }

    /// The engine's name for a topic's shared history (distinct from its channel: a
    /// JetStream subject would otherwise keep presence traffic too).
    fn history_name(&self, key: &TopicKey) -> String {
        topic_name(&self.namespace, "history", key)
    }

    fn nodes_channel(&self) -> String {
        format!("{}:nodes", self.namespace)
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The engine's name and whether its link is up (for `/api/health`).
    pub fn engine_state(&self) -> (&'static str, bool) {
        (self.engine.name(), self.engine.connected())
    }

    /// Other nodes alive.
    pub fn live_nodes(&self) -> usize {
        crate::sync::lock(&self.nodes, "cluster nodes").len()
    }

    fn send(&self, key: &TopicKey, bytes: Option<Bytes>) {
        self.send_to(key, bytes, false);
    }

    /// Sends to the topic's channel, appending to its shared history first when `kept`.
    fn send_to(&self, key: &TopicKey, bytes: Option<Bytes>, kept: bool) {
        match bytes {
            Some(bytes) => {
                let queued = match kept {
                    true => self
                        .engine
                        .publish_kept(self.history_name(key), self.channel(key), bytes),
                    false => self.engine.publish(self.channel(key), bytes),
                };
                if !queued {
                    warn!(topic = %key.topic, "cluster engine queue full: not sent to other nodes");
                    crate::observability::metrics::cluster_dropped(1);
                }
            }
            None => warn!(topic = %key.topic, "too large for a cluster envelope: not sent to other nodes"),
        }
    }

    fn deliver_remote(&self, bytes: &Bytes) {
        let Envelope { origin, key, body } = match envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, len = bytes.len(), "cluster message not delivered");
                return;
            }
        };
        if origin == self.origin {
            return;
        }
        // Anything a node sends shows it alive, so a node whose presence arrived before its
        // first heartbeat still expires when it dies.
        let new = crate::sync::lock(&self.nodes, "cluster nodes").heard(origin, tokio::time::Instant::now());
        if new {
            info!(node = format_args!("{origin:016x}"), "cluster: node alive");
            self.on_new_node();
        }
        match body {
            Body::Heartbeat { ready } => self.on_heartbeat(origin, ready),
            Body::Occupancy { occupied } => self.on_occupancy(origin, &key, occupied),
            Body::Reported { occupied } => self.on_reported(&key, occupied),
            Body::ServerSet { presence_key, record } => self.on_server(&key, &presence_key, Some(record)),
            Body::ServerDel { presence_key } => self.on_server(&key, &presence_key, None),
            Body::NodeState(part) => self.on_node_state(origin, part),
            Body::Broadcast { stored_id, kept, msg } => {
                let deliver = || {
                    self.local.publish(
                        &key,
                        Message::Broadcast {
                            msg: &msg,
                            exclude: None,
                            stored_id: stored_id.as_deref(),
                            // Channels that replayed it from the engine's history skip it.
                            kept: kept.as_ref().map(|(id, at_us)| (id.as_str(), *at_us)),
                        },
                    )
                };
                let attached = self.attached();
                let history = attached.as_ref().and_then(|(_, publish)| publish.history());
                let n = match (&kept, history) {
                    // Kept here too, so a join replaying on this node has it.
                    (Some((id, at_us)), Some(history)) if !key.private => {
                        let stored = Stored {
                            id: id.as_str().into(),
                            at_us: *at_us,
                            body: stored_body(&msg),
                        };
                        history.record_remote(&key, stored, deliver)
                    }
                    _ => deliver(),
                };
                debug!(topic = %key.topic, delivered = n, "cluster broadcast delivered");
            }
            Body::HistoryRequest { request, since_ms } => {
                let attached = self.attached();
                let history = attached.as_ref().and_then(|(_, publish)| publish.history());
                let entries = match history {
                    Some(history) if !key.private => history.recent(&key.topic, since_ms),
                    // Answered even empty: the requester counts answers.
                    _ => Vec::new(),
                };
                self.send(&key, history::encode_answer(self.origin, &key, request, &entries));
            }
            Body::HistoryAnswer { request, entries } => {
                crate::sync::lock(&self.histories, "cluster histories").answered(request, origin, entries);
            }
            Body::Presence(changes) => self.merge_presence(origin, &key, changes),
            Body::Changes { numbered, relayed } => {
                // A leader delivers what it streams itself.
                if self.is_leader() {
                    return;
                }
                let step = match numbered {
                    Some((term, seq)) => {
                        let run = sequence::Run { origin, term };
                        crate::sync::lock(&self.sequencer, "cluster sequencer").batch(
                            run,
                            seq,
                            relayed,
                            std::time::Instant::now(),
                        )
                    }
                    None => Step {
                        deliver: vec![relayed],
                        ask: None,
                    },
                };
                self.follow(step);
            }
            Body::Streams(postgres_changes, db_broadcast, span) => {
                if !self.is_leader() && self.local.changes().is_some() {
                    *crate::sync::lock(&self.leader_heard, "cluster leader") = Some(tokio::time::Instant::now());
                    self.mirror_streams(postgres_changes, db_broadcast);
                    if let Some(span) = span {
                        let step = crate::sync::lock(&self.sequencer, "cluster sequencer").span(
                            origin,
                            span,
                            std::time::Instant::now(),
                        );
                        self.follow(step);
                    }
                }
            }
            Body::ChangesRequest(ask) => self.resend(ask),
            Body::SyncRequest { target } => {
                if target.is_none_or(|t| t == self.origin) {
                    if let Some((hub, _)) = self.attached() {
                        let full = LocalChanges::Full(hub.full_state(&key));
                        self.send(&key, envelope::encode_presence(self.origin, &key, &full));
                    }
                }
            }
        }
    }

    fn merge_presence(&self, origin: u64, key: &TopicKey, changes: LocalChanges) {
        let full = matches!(changes, LocalChanges::Full(_));
        if let Some((hub, publish)) = self.attached() {
            if let Some(missed) = hub.merge_remote(&publish, key, changes) {
                debug!(topic = %key.topic, node = format_args!("{:016x}", missed.0), "cluster: presence delta missed; asking for a full state");
                self.send(key, envelope::encode_sync_request(self.origin, key, Some(missed.0)));
            }
        }
        if full {
            let mut syncs = crate::sync::lock(&self.syncs, "cluster syncs");
            if let Some(wait) = syncs.get_mut(key) {
                if wait.answered.insert(origin) {
                    wait.count.send_replace(wait.answered.len());
                }
            }
        }
    }

    /// The link is back after a loss: what was sent meanwhile is lost, so every followed
    /// topic's presence is exchanged again (ours sent, theirs asked for).
    fn resync_all(&self) {
        let Some((hub, _)) = self.attached() else {
            return;
        };
        let keys: Vec<TopicKey> = crate::sync::lock(&self.interest, "cluster interest")
            .by_key
            .iter()
            .filter(|(_, interest)| **interest == Interest::Members)
            .map(|(key, _)| key.clone())
            .collect();
        info!(
            topics = keys.len(),
            "cluster: exchanging presence again after the engine came back"
        );
        for key in keys {
            let full = LocalChanges::Full(hub.full_state(&key));
            self.send(&key, envelope::encode_presence(self.origin, &key, &full));
            self.send(&key, envelope::encode_sync_request(self.origin, &key, None));
        }
    }

    /// Marks `key` wanted and subscribes to it on the engine; returns the engine's
    /// confirmation and whether this node did not follow the topic before.
    fn want(&self, key: &TopicKey) -> (oneshot::Receiver<()>, bool) {
        let mut interests = crate::sync::lock(&self.interest, "cluster interest");
        let first = interests.by_key.insert(key.clone(), Interest::Members).is_none();
        // Idempotent on the engine side: a channel already subscribed is confirmed at once.
        (self.engine.subscribe(&self.channel(key)), first)
    }

    /// After the delay, drops the topic's subscription (and what this node knew of its
    /// presence elsewhere) unless something changed since.
    fn schedule_unsubscribe(self: &Arc<Self>, key: &TopicKey) {
        let change = {
            let mut interests = crate::sync::lock(&self.interest, "cluster interest");
            interests.changes += 1;
            let change = interests.changes;
            interests.by_key.insert(key.clone(), Interest::Idle(change));
            change
        };
        let broker = Arc::downgrade(self);
        let delay = self.unsubscribe_delay;
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            // Followed for the cluster (reporting, server entries): kept; unsubscribed
            // once that ends.
            if broker.follows(&key) {
                return;
            }
            let mut interests = crate::sync::lock(&broker.interest, "cluster interest");
            if interests.by_key.get(&key) == Some(&Interest::Idle(change)) {
                interests.by_key.remove(&key);
                let channel = broker.channel(&key);
                broker.engine.unsubscribe(&channel);
                drop(interests);
                if let Some((hub, _)) = broker.attached() {
                    hub.forget(&key);
                }
                debug!(%channel, "cluster: no local members left; unsubscribed");
            }
        });
    }

    /// How many nodes will answer a request that `receivers` nodes got (this one
    /// included), or, when the engine cannot count (NATS), one sent to every node: those
    /// known alive, or in the first heartbeats after start as many as answer in time
    /// (`usize::MAX`: wait out the window).
    fn answers_expected(&self, receivers: Option<usize>) -> usize {
        match receivers {
            Some(n) => n.saturating_sub(1),
            None if self.started.elapsed() < liveness::HEARTBEAT * 2 => usize::MAX,
            None => self.live_nodes(),
        }
    }

    /// The public history of `key` since `since_ms` kept outside this node: the engine's,
    /// else (NATS without JetStream) the other nodes' memory. Empty, with a warning, when
    /// the engine cannot be read: the join replays this node's memory only.
    async fn shared_history(&self, key: &TopicKey, since_ms: i64) -> Vec<Stored> {
        if !self.engine.keeps_history() {
            return self.gather_history(key, since_ms).await;
        }
        let entries = match self.engine.history(self.history_name(key)).await {
            Ok(entries) => entries,
            Err(error) => {
                warn!(topic = %key.topic, %error, "cluster: cannot read the shared public history; replaying this node's only");
                return Vec::new();
            }
        };
        entries
            .iter()
            .filter_map(|bytes| history_entry(key, bytes))
            .filter(|m| m.at_us >= since_ms.saturating_mul(1000))
            .collect()
    }

    /// Gathers every other node's public history of `key` since `since_ms` (waiting at
    /// most [`SYNC_WAIT`]). The request goes on the nodes' channel, so nodes that do not
    /// follow the topic answer too: the node a message was published on keeps it.
    async fn gather_history(&self, key: &TopicKey, since_ms: i64) -> Vec<Stored> {
        let request = uuid::Uuid::new_v4().as_u64_pair().0;
        let mut counted = crate::sync::lock(&self.histories, "cluster histories").start(request);
        let expected = match history::encode_request(self.origin, key, request, since_ms) {
            Some(bytes) => tokio::time::timeout(SYNC_WAIT, self.engine.publish_counted(&self.nodes_channel(), bytes))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|receivers| self.answers_expected(receivers)),
            None => None,
        };
        if let Some(others) = expected.filter(|n| *n > 0) {
            let answered = tokio::time::timeout(SYNC_WAIT, counted.wait_for(|n| *n >= others)).await;
            if answered.is_err() && others != usize::MAX {
                warn!(topic = %key.topic, expected = others, "cluster: not every node sent its history in time; replaying what arrived");
            }
        }
        crate::sync::lock(&self.histories, "cluster histories").finish(request)
    }

    /// A node starting to follow `key` asks the other nodes for their presence and waits
    /// (at most [`SYNC_WAIT`]) until each has answered, so the first member's
    /// `presence_state` is complete.
    ///
    /// Redis counts the nodes that received the request on the topic's channel: exactly
    /// those that answer. NATS cannot count, so there the request goes on the nodes'
    /// channel, every node answers (an empty state when it does not follow the topic), and
    /// the wait is for every node known alive; in the first heartbeats after start, when
    /// not every node may be known yet, it waits out the window instead.
    async fn sync_on_first_join(&self, key: &TopicKey) {
        let (count, mut counted) = watch::channel(0);
        crate::sync::lock(&self.syncs, "cluster syncs").insert(
            key.clone(),
            SyncWait {
                answered: AHashSet::new(),
                count,
            },
        );
        let expected = match envelope::encode_sync_request(self.origin, key, None) {
            Some(bytes) => {
                let (channel, counting) = match self.engine.counts_receivers() {
                    true => (self.channel(key), true),
                    false => (self.nodes_channel(), false),
                };
                let sent = tokio::time::timeout(SYNC_WAIT, self.engine.publish_counted(&channel, bytes)).await;
                match sent {
                    Ok(Ok(receivers)) if receivers.is_some() || !counting => Some(self.answers_expected(receivers)),
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(others) = expected.filter(|n| *n > 0) {
            let answered = tokio::time::timeout(SYNC_WAIT, counted.wait_for(|n| *n >= others)).await;
            if answered.is_err() && others != usize::MAX {
                warn!(topic = %key.topic, expected = others, "cluster: not every node sent its presence in time; the rest arrives as diffs");
            }
        }
        crate::sync::lock(&self.syncs, "cluster syncs").remove(key);
    }
}

/// The name of a topic's `what` (channel, history) on the engine: public and private
/// topics of one name are distinct.
fn topic_name(namespace: &str, what: &str, key: &TopicKey) -> String {
    let privacy = if key.private { "private" } else { "public" };
    format!("{namespace}:{what}:{privacy}:{}", key.topic)
}

/// A message of the engine's shared history (the envelope it was published in).
fn history_entry(key: &TopicKey, bytes: &Bytes) -> Option<Stored> {
    match envelope::decode(bytes) {
        Ok(Envelope {
            key: entry_key,
            body:
                Body::Broadcast {
                    kept: Some((id, at_us)),
                    msg,
                    ..
                },
            ..
        }) if entry_key == *key => Some(Stored {
            id: id.into(),
            at_us,
            body: stored_body(&msg),
        }),
        Ok(_) => {
            warn!(topic = %key.topic, "cluster: shared history entry of another kind or topic; skipped");
            None
        }
        Err(e) => {
            warn!(topic = %key.topic, error = %e, len = bytes.len(), "cluster: shared history entry unreadable; skipped");
            None
        }
    }
}

/// How a received broadcast is kept in the history: as it was delivered (a map carries
/// its `meta.id`; a replay appends its own `meta`, which JSON parsers read last).
fn stored_body(msg: &realtime_protocol::BroadcastMessage) -> StoredBody {
    match msg {
        realtime_protocol::BroadcastMessage::Map(map) => StoredBody::Map(map.clone()),
        realtime_protocol::BroadcastMessage::User {
            event, encoding, body, ..
        } => StoredBody::User {
            event: event.clone(),
            payload: match encoding {
                realtime_protocol::Encoding::Json => Ok(body.clone()),
                realtime_protocol::Encoding::Binary => Err(body.clone()),
            },
        },
    }
}

/// The broker behind an `Arc`, so that delayed unsubscriptions can hold it weakly.
pub struct Clustered(pub Arc<ClusterBroker>);

impl Broker for Clustered {
    fn publish(&self, key: &TopicKey, message: Message<'_>) -> usize {
        let broker = &self.0;
        let delivered = broker.local.publish(key, message);
        // Presence diffs stay on this node: other nodes render theirs from the replicated
        // CRDT (see `presence_changes`).
        if let Message::Broadcast {
            msg, stored_id, kept, ..
        } = message
        {
            let bytes = envelope::encode(broker.origin, key, stored_id, kept, msg);
            broker.send_to(key, bytes, kept.is_some());
        }
        delivered
    }

    fn publish_changes<'a>(&'a self, batch: &'a Batch) -> Delivery<'a> {
        Box::pin(async move {
            let broker = &self.0;
            let offsets = broker.relay_changes(batch);
            broker.deliver_changes(batch, &offsets).await;
        })
    }

    fn handed_over(&self) -> Delivery<'_> {
        Box::pin(async move {
            let broker = &self.0;
            if !broker.engine.connected() {
                return;
            }
            match tokio::time::timeout(SUBSCRIBE_WAIT, broker.engine.handed_over()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => debug!("cluster: messages not handed to the engine; acknowledged as delivered here"),
                Err(_) => warn!("cluster engine did not take messages in time; acknowledged as delivered here"),
            }
        })
    }

    fn shared_history<'a>(&'a self, key: &'a TopicKey, since_ms: i64) -> HistoryFetch<'a> {
        Box::pin(self.0.shared_history(key, since_ms))
    }

    fn replicates_presence(&self) -> bool {
        true
    }

    fn presence_changes(&self, key: &TopicKey, changes: &LocalChanges) {
        let broker = &self.0;
        broker.send(key, envelope::encode_presence(broker.origin, key, changes));
    }

    fn ready<'a>(&'a self, key: &'a TopicKey) -> Delivery<'a> {
        Box::pin(async move {
            let broker = &self.0;
            let (confirmed, first) = broker.want(key);
            if tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await.is_err() {
                warn!(topic = %key.topic, "cluster engine did not confirm the subscription in time: joining with this node's messages only");
            } else if first && broker.presence.get().is_some() {
                // Asked even when no other node was heard from yet (they may have started
                // a moment ago): see `sync_on_first_join` for how many answers to expect.
                broker.sync_on_first_join(key).await;
            }
            // Not yet a member: if the join goes no further, the subscription is dropped
            // after the delay like any idle one. Counted from here, not from the start of
            // the join, so a slow sync does not drop the state it just gathered.
            if broker.registry.subscriber_count(key) == 0 {
                broker.schedule_unsubscribe(key);
            }
        })
    }

    fn topic_added(&self, key: &TopicKey) {
        // The confirmation is awaited by `ready` at join; here only the wish matters.
        drop(self.0.want(key));
        self.0.local_occupancy(key, true);
    }

    fn topic_removed(&self, key: &TopicKey) {
        self.0.schedule_unsubscribe(key);
        self.0.local_occupancy(key, false);
    }

    fn reports_occupancy(&self) -> bool {
        true
    }

    fn server_presence(&self, key: &TopicKey, presence_key: &str, record: Option<&crate::presence::server::Record>) {
        self.0.server_changed(key, presence_key, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_topics_of_one_name_have_distinct_histories_and_channels() {
        let public = TopicKey::new("realtime:room", false);
        let private = TopicKey::new("realtime:room", true);
        assert_eq!(topic_name("ns", "history", &public), "ns:history:public:realtime:room");
        assert_ne!(
            topic_name("ns", "history", &public),
            topic_name("ns", "history", &private)
        );
        assert_ne!(topic_name("ns", "history", &public), topic_name("ns", "topic", &public));
    }
}
