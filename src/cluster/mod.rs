//! Several nodes acting as one server, coordinated through an engine (Redis or Valkey;
//! `CLUSTER_URL`). [`ClusterBroker`] is the [`Broker`] of a clustered node: a message
//! published here is delivered to this node's members at once, as on a single node, and
//! handed to the engine once, as an [`envelope`]; every other node with members on that
//! topic receives it and delivers it to its own members (encoding once per wire version,
//! as for a local message). A node subscribes to a topic's engine channel only while it has
//! members there, and drops the subscription [`Settings::unsubscribe_delay`] after the
//! last one leaves (so a member rejoining at once does not churn the engine).
//!
//! Not replicated yet: presence (each node shows its own members' presence), Postgres
//! Changes and Broadcast from Database (each node streams the slot itself, so only one
//! node at a time gets the changes), the public replay history. README "Run a cluster"
//! says so.

pub mod engine;
pub mod envelope;
pub mod redis;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::engine::Engine;
use crate::fanout::{Registry, TopicKey};
use crate::publish::broker::{Broker, Delivery, Local, Message};
use crate::replication::Batch;

/// How long a join waits for the engine to confirm its topic's subscription before it
/// goes ahead without (the engine is down: the member gets this node's messages only).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Cluster settings (`CLUSTER_URL`, `NODE_ID`, `CLUSTER_NAMESPACE`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://host:port[/db]` or `rediss://…`.
    pub url: String,
    /// This node's name in logs and `/api/health`.
    pub node_id: String,
    /// Prefix of every engine channel, so several clusters can share one engine.
    pub namespace: String,
    /// How long a topic's subscription outlives its last local member.
    pub unsubscribe_delay: Duration,
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

/// The broker of a clustered node.
pub struct ClusterBroker {
    local: Local,
    registry: Arc<Registry>,
    engine: Arc<dyn Engine>,
    /// This process' incarnation: its own envelopes come back from the engine and are
    /// recognised by it.
    origin: u64,
    node_id: String,
    namespace: String,
    unsubscribe_delay: Duration,
    /// Wanted engine channels. Changes are sent to the engine under this lock, so their
    /// order there is the order decided here.
    interest: Mutex<(u64, AHashMap<String, Interest>)>,
}

/// Starts a clustered node's broker over `local` (this node's delivery).
pub fn start(settings: &Settings, registry: Arc<Registry>, local: Local) -> Result<Arc<ClusterBroker>, String> {
    let (engine, incoming): (Arc<dyn Engine>, mpsc::Receiver<Bytes>) = match settings.url.split_once("://") {
        Some(("redis" | "rediss", _)) => {
            let (redis, incoming) = redis::Redis::start(&settings.url)?;
            (Arc::new(redis), incoming)
        }
        Some(("nats", _)) => return Err("CLUSTER_URL: nats:// is not supported yet; use redis://".into()),
        _ => {
            return Err(format!(
                "CLUSTER_URL: expected redis://… or rediss://…, got {:?}",
                settings.url
            ))
        }
    };
    let broker = Arc::new(ClusterBroker {
        local,
        registry,
        engine,
        origin: rand::random(),
        node_id: settings.node_id.clone(),
        namespace: settings.namespace.clone(),
        unsubscribe_delay: settings.unsubscribe_delay,
        interest: Mutex::new((0, AHashMap::new())),
    });
    info!(node_id = %broker.node_id, engine = broker.engine.name(), namespace = %broker.namespace, "cluster mode");
    tokio::spawn(receive(Arc::downgrade(&broker), incoming));
    Ok(broker)
}

/// Delivers what other nodes published to this node's members.
async fn receive(broker: std::sync::Weak<ClusterBroker>, mut incoming: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = incoming.recv().await {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.deliver_remote(&bytes);
    }
}

impl ClusterBroker {
    /// The engine channel of a topic: public and private topics of one name are distinct.
    fn channel(&self, key: &TopicKey) -> String {
        let privacy = if key.private { "private" } else { "public" };
        format!("{}:topic:{privacy}:{}", self.namespace, key.topic)
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The engine's name and whether its link is up (for `/api/health`).
    pub fn engine_state(&self) -> (&'static str, bool) {
        (self.engine.name(), self.engine.connected())
    }

    fn deliver_remote(&self, bytes: &Bytes) {
        let env = match envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, len = bytes.len(), "cluster message not delivered");
                return;
            }
        };
        if env.origin == self.origin {
            return;
        }
        let n = self.local.publish(
            &env.key,
            Message::Broadcast {
                msg: &env.msg,
                exclude: None,
                stored_id: env.stored_id.as_deref(),
            },
        );
        debug!(topic = %env.key.topic, delivered = n, "cluster message delivered");
    }

    /// Marks `key` wanted and subscribes to it on the engine if it was not; returns the
    /// engine's confirmation.
    fn want(&self, key: &TopicKey, interest: Interest) -> tokio::sync::oneshot::Receiver<()> {
        let channel = self.channel(key);
        let mut guard = crate::sync::lock(&self.interest, "cluster interest");
        guard.1.insert(channel.clone(), interest);
        // Idempotent on the engine side: a channel already subscribed is confirmed at once.
        self.engine.subscribe(&channel)
    }

    /// After the delay, drops the topic's subscription unless something changed since.
    fn schedule_unsubscribe(self: &Arc<Self>, key: &TopicKey) {
        let channel = self.channel(key);
        let change = {
            let mut guard = crate::sync::lock(&self.interest, "cluster interest");
            guard.0 += 1;
            let change = guard.0;
            guard.1.insert(channel.clone(), Interest::Idle(change));
            change
        };
        let broker = Arc::downgrade(self);
        let delay = self.unsubscribe_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let mut guard = crate::sync::lock(&broker.interest, "cluster interest");
            if guard.1.get(&channel) == Some(&Interest::Idle(change)) {
                guard.1.remove(&channel);
                broker.engine.unsubscribe(&channel);
                debug!(%channel, "cluster: no local members left; unsubscribed");
            }
        });
    }
}

/// The broker behind an `Arc`, so that delayed unsubscriptions can hold it weakly.
pub struct Clustered(pub Arc<ClusterBroker>);

impl Broker for Clustered {
    fn publish(&self, key: &TopicKey, message: Message<'_>) -> usize {
        let broker = &self.0;
        let delivered = broker.local.publish(key, message);
        // Presence diffs are not replicated this way: each node renders its own members'
        // presence (presence replication is the CRDT's job, not yet wired).
        if let Message::Broadcast { msg, stored_id, .. } = message {
            match envelope::encode(broker.origin, key, stored_id, msg) {
                Some(bytes) => {
                    if !broker.engine.publish(&broker.channel(key), bytes) {
                        warn!(topic = %key.topic, "cluster engine queue full: message delivered on this node only");
                        crate::observability::metrics::cluster_dropped(1);
                    }
                }
                None => {
                    warn!(topic = %key.topic, "message too large for a cluster envelope: delivered on this node only")
                }
            }
        }
        delivered
    }

    fn publish_changes<'a>(&'a self, batch: &'a Batch) -> Delivery<'a> {
        self.0.local.publish_changes(batch)
    }

    fn ready<'a>(&'a self, key: &'a TopicKey) -> Delivery<'a> {
        Box::pin(async move {
            let broker = &self.0;
            // Not yet a member: if the join goes no further, the subscription is dropped
            // after the delay like any idle one.
            let confirmed = broker.want(key, Interest::Members);
            if broker.registry.subscriber_count(key) == 0 {
                broker.schedule_unsubscribe(key);
            }
            if tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await.is_err() {
                warn!(topic = %key.topic, "cluster engine did not confirm the subscription in time: joining with this node's messages only");
            }
        })
    }

    fn topic_added(&self, key: &TopicKey) {
        // The confirmation is awaited by `ready` at join; here only the wish matters.
        drop(self.0.want(key, Interest::Members));
    }

    fn topic_removed(&self, key: &TopicKey) {
        self.0.schedule_unsubscribe(key);
    }
}
