//! The publish path: the one entry point every producer of topic messages calls (client
//! broadcasts, REST broadcasts, persisted broadcasts, Broadcast from Database, presence
//! diffs). It does what every message needs whatever its source (the public history,
//! counting events against the tenant's rate) and hands the message to the [`Broker`],
//! which delivers it to the topic's subscribers: in this process today ([`broker::Local`]),
//! through an engine to every node in a cluster.
//!
//! Channels join and leave topics here too ([`Publisher::subscribe`]), so the broker knows
//! which topics this node has members for.
//!
//! Producers never reach the subscriber registry themselves, so a new broker or an
//! observer of published messages is an addition here, not a change to every producer.

pub mod broker;
pub mod history;

use std::sync::Arc;

use realtime_protocol::BroadcastMessage;

pub use self::broker::{Broker, Message};
use self::history::History;
use crate::fanout::{ChannelId, Registry, Subscriber, TopicKey};
use crate::limits::Limits;
use crate::presence::server::Record;
use crate::presence::state::LocalChanges;
use crate::replication::Batch;

/// The publish entry point, shared by every producer.
pub struct Publisher {
    registry: Arc<Registry>,
    broker: Arc<dyn Broker>,
    history: Option<History>,
    limits: Arc<Limits>,
    /// Told when a topic gets its first or loses its last member here (webhooks).
    webhooks: std::sync::OnceLock<Arc<crate::webhooks::Webhooks>>,
}

impl Publisher {
    /// Publishes through `broker` to the members kept in `registry`, keeping public
    /// broadcasts in `history` when there is one (`REPLAY_PUBLIC`) and counting events in
    /// `limits`.
    pub fn new(
        registry: Arc<Registry>,
        broker: Arc<dyn Broker>,
        history: Option<History>,
        limits: Arc<Limits>,
    ) -> Publisher {
        Publisher {
            registry,
            broker,
            history,
            limits,
            webhooks: std::sync::OnceLock::new(),
        }
    }

    /// Completes when a member joining `key` will receive what is published on it
    /// anywhere (at once on a single node; once the engine subscribed in a cluster).
    pub async fn ready(&self, key: &TopicKey) {
        self.broker.ready(key).await;
    }

    /// Reports topics becoming occupied and vacated on this node to `webhooks` (set
    /// once, at start), unless the broker reports them for the whole cluster.
    pub fn observe(&self, webhooks: Arc<crate::webhooks::Webhooks>) {
        let _ = self.webhooks.set(webhooks);
    }

    /// Topics with members on this node that `keep` selects, with their member count.
    pub fn topics(&self, keep: impl Fn(&TopicKey) -> bool) -> Vec<(TopicKey, usize)> {
        self.registry.topics(keep)
    }

    /// Adds a channel to a topic's members on this node.
    pub fn subscribe(&self, key: &TopicKey, sub: Subscriber) {
        if self.registry.subscribe(key, sub) {
            self.broker.topic_added(key);
            if let Some(w) = self.webhooks.get().filter(|_| !self.broker.reports_occupancy()) {
                w.occupied(key);
            }
        }
    }

    /// Replaces a member's entry (what it may read changed with a new token); adds it when
    /// it was not a member.
    pub fn resubscribe(&self, key: &TopicKey, sub: Subscriber) {
        if let Err(sub) = self.registry.replace(key, sub) {
            self.subscribe(key, sub);
        }
    }

    /// Removes a channel from a topic's members on this node.
    pub fn unsubscribe(&self, key: &TopicKey, channel: ChannelId) {
        if self.registry.unsubscribe(key, channel) {
            self.broker.topic_removed(key);
            if let Some(w) = self.webhooks.get().filter(|_| !self.broker.reports_occupancy()) {
                w.vacated(key);
            }
        }
    }

    /// The public broadcast history, with `REPLAY_PUBLIC=true`.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Publishes a broadcast from a client or REST, not stored in the database: a public
    /// one gets an id and is kept when the history is on. Returns how many channels of
    /// this node it was queued for.
    pub fn broadcast(&self, key: &TopicKey, msg: &BroadcastMessage, exclude: Option<ChannelId>) -> usize {
        let deliver = |msg: &BroadcastMessage, kept: Option<(&str, i64)>| {
            self.broker.publish(
                key,
                Message::Broadcast {
                    msg,
                    exclude,
                    stored_id: None,
                    kept,
                },
            )
        };
        let delivered = match &self.history {
            Some(history) if !key.private => history.record(key, msg, deliver),
            _ => deliver(msg, None),
        };
        self.count_events(delivered)
    }

    /// What a cluster keeps of `key`'s public history since `since_ms` outside this node
    /// (empty on a single node). Read by a replaying join once it follows the topic.
    pub async fn shared_history(&self, key: &TopicKey, since_ms: i64) -> Vec<history::Stored> {
        self.broker.shared_history(key, since_ms).await
    }

    /// Completes once what was published so far has left this node: in a cluster, once
    /// the engine has it (bounded). Awaited before a broadcast's `ack` reply.
    pub async fn handed_over(&self) {
        self.broker.handed_over().await
    }

    /// Publishes a message stored in `realtime.messages` as row `id` (a persisted client
    /// broadcast, or Broadcast from Database): channels that got it by replay at join are
    /// skipped.
    pub fn stored(&self, key: &TopicKey, msg: &BroadcastMessage, id: &str, exclude: Option<ChannelId>) -> usize {
        let delivered = self.broker.publish(
            key,
            Message::Broadcast {
                msg,
                exclude,
                stored_id: Some(id),
                kept: None,
            },
        );
        self.count_events(delivered)
    }

    /// Publishes a batch of row changes from the replication slot; completes once every
    /// subscriber's frames are queued.
    pub async fn changes(&self, batch: &Batch) {
        self.broker.publish_changes(batch).await;
    }

    /// Whether presence changes are replicated to other nodes (a cluster).
    pub fn replicates_presence(&self) -> bool {
        self.broker.replicates_presence()
    }

    /// Hands this node's presence changes of a topic to the broker, which replicates them
    /// to the other nodes (nothing to do on a single node).
    pub fn presence_changes(&self, key: &TopicKey, changes: &LocalChanges) {
        self.broker.presence_changes(key, changes);
    }

    /// Hands a change of a server-set presence record made on this node to the broker,
    /// which replicates it to the other nodes (nothing to do on a single node).
    pub fn server_presence(&self, key: &TopicKey, presence_key: &str, record: Option<&Record>) {
        self.broker.server_presence(key, presence_key, record);
    }

    /// Publishes a `presence_diff` payload to the members allowed to read presence.
    /// Presence traffic is not counted as events, as in Supabase.
    pub fn presence_diff(&self, key: &TopicKey, payload_json: &[u8]) -> usize {
        self.broker.publish(key, Message::PresenceDiff(payload_json))
    }

    /// Supabase counts a broadcast and each of its deliveries against events per second.
    fn count_events(&self, delivered: usize) -> usize {
        self.limits.events.add(1 + delivered as u64);
        delivered
    }
}
