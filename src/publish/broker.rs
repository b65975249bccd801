//! The broker seam: where a published message leaves the producer and reaches every
//! subscriber of its topic. [`Local`] delivers to this process's [`Registry`]; a cluster
//! broker (Redis, NATS) implements the same trait, delivering locally and through its
//! engine to the other nodes' local fan-out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use realtime_protocol::{encode, BroadcastMessage};

use crate::fanout::{ChannelId, Registry, TopicKey};
use crate::observability::metrics::{self, Out};
use crate::presence::server::Record;
use crate::presence::state::LocalChanges;
use crate::publish::history::Stored;
use crate::replication::Batch;

/// A delivery in progress; it completes once every frame is queued.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Stored messages being read from a cluster's engine or gathered from other nodes.
pub type HistoryFetch<'a> = Pin<Box<dyn Future<Output = Vec<Stored>> + Send + 'a>>;

/// Where row changes published on this node are delivered (Postgres Changes: filters and
/// RLS per subscriber). Boxed futures: one allocation per batch, not per change.
pub trait ChangeConsumer: Send + Sync {
    /// Delivers a batch of committed changes to this node's subscribers.
    fn deliver<'a>(&'a self, batch: &'a Batch) -> Delivery<'a>;

    /// The replication stream feeding this node is up (told by the cluster's leader).
    fn stream_up(&self);

    /// The replication stream feeding this node is down.
    fn stream_down(&self);

    /// A table's shape as a relayed change carries it differs from the last one seen.
    fn relation_changed(&self, relation: &realtime_wal::change::Relation);
}

/// What is published on a topic.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A broadcast event.
    Broadcast {
        /// The message as each wire version encodes it.
        msg: &'a BroadcastMessage,
        /// The sender's own channel when it joined with `self: false`.
        exclude: Option<ChannelId>,
        /// The stored row's id, for a message kept in `realtime.messages`: channels that
        /// already got it by replay at join are skipped (as for `kept`).
        stored_id: Option<&'a str>,
        /// Kept in the public history (`REPLAY_PUBLIC`) as (id, unix µs): other nodes of a
        /// cluster keep it too.
        kept: Option<(&'a str, i64)>,
    },
    /// A `presence_diff` payload (a JSON object `{joins, leaves}`).
    PresenceDiff(&'a [u8]),
}

/// Delivers published messages to the subscribers of their topic.
pub trait Broker: Send + Sync {
    /// Delivers `message` to the topic's subscribers and returns how many channels of this
    /// node it was queued for. Never waits: fan-out pushes into outboxes.
    fn publish(&self, key: &TopicKey, message: Message<'_>) -> usize;

    /// Delivers a batch of row changes, decoded once from the replication slot, to the
    /// Postgres Changes subscribers; completes once it is handed over (the slot position
    /// is then acknowledged).
    fn publish_changes<'a>(&'a self, batch: &'a Batch) -> Delivery<'a>;

    /// Completes when a member joining `key` now will receive what is published on it
    /// anywhere: a cluster broker subscribes to the topic on its engine first. Awaited by
    /// a join before it replies.
    fn ready<'a>(&'a self, _key: &'a TopicKey) -> Delivery<'a> {
        Box::pin(std::future::ready(()))
    }

    /// Completes once what was published so far has left this node (a cluster broker: is
    /// with the engine, or could not be handed over in time). Awaited before an `ack`.
    fn handed_over(&self) -> Delivery<'_> {
        Box::pin(std::future::ready(()))
    }

    /// What a cluster keeps of a public topic's history since `since_ms` outside this
    /// node (its engine's, or the other nodes'); none on a single node, where the history
    /// is all here.
    fn shared_history<'a>(&'a self, _key: &'a TopicKey, _since_ms: i64) -> HistoryFetch<'a> {
        Box::pin(std::future::ready(Vec::new()))
    }

    /// This node's presence changes of a topic since it last handed them over, for the
    /// other nodes (ignored on a single node).
    fn presence_changes(&self, _key: &TopicKey, _changes: &LocalChanges) {}

    /// Whether [`Broker::presence_changes`] is wanted (building them costs a little per
    /// presence flush, wasted on a single node).
    fn replicates_presence(&self) -> bool {
        false
    }

    /// A server-set presence record changed on this node (`None`: removed), for the
    /// other nodes (ignored on a single node).
    fn server_presence(&self, _key: &TopicKey, _presence_key: &str, _record: Option<&Record>) {}

    /// Whether the broker reports `channel.occupied`/`channel.vacated` itself (a cluster
    /// reports them once for all nodes); otherwise the publish path reports this node's.
    fn reports_occupancy(&self) -> bool {
        false
    }

    /// `key` got its first member on this node: a cluster broker starts receiving the
    /// topic from its engine. Called once per transition, before the member can receive.
    fn topic_added(&self, _key: &TopicKey) {}

    /// `key`'s last member on this node left.
    fn topic_removed(&self, _key: &TopicKey) {}
}

/// The in-process broker: a message goes straight to this node's subscribers.
pub struct Local {
    registry: Arc<Registry>,
    changes: Option<Arc<dyn ChangeConsumer>>,
}

impl Local {
    /// A broker over `registry`, delivering row changes to `changes` (none without a
    /// database).
    pub fn new(registry: Arc<Registry>, changes: Option<Arc<dyn ChangeConsumer>>) -> Local {
        Local { registry, changes }
    }
}

impl Local {
    /// Where row changes are delivered on this node (none without a database).
    pub fn changes(&self) -> Option<&Arc<dyn ChangeConsumer>> {
        self.changes.as_ref()
    }
}

impl Broker for Local {
    fn publish(&self, key: &TopicKey, message: Message<'_>) -> usize {
        match message {
            Message::Broadcast {
                msg,
                exclude,
                stored_id,
                kept,
            } => {
                // A channel that got the message by replay at join skips it: a stored row,
                // or a kept one read from a cluster's shared history.
                let id = stored_id.or(kept.map(|(id, _)| id));
                let n = self.registry.publish(
                    key,
                    exclude,
                    |s| s.broadcast_read && !id.is_some_and(|id| s.replayed.as_ref().is_some_and(|r| r.contains(id))),
                    |vsn| msg.encode(vsn, &key.topic),
                );
                metrics::out(Out::Broadcast, n);
                n
            }
            Message::PresenceDiff(json) => {
                let n = self.registry.publish(
                    key,
                    None,
                    |s| s.presence_read,
                    |vsn| Some(encode::fastlane(vsn, &key.topic, "presence_diff", json)),
                );
                metrics::out(Out::PresenceDiff, n);
                n
            }
        }
    }

    fn publish_changes<'a>(&'a self, batch: &'a Batch) -> Delivery<'a> {
        match &self.changes {
            Some(consumer) => consumer.deliver(batch),
            None => Box::pin(std::future::ready(())),
        }
    }
}
