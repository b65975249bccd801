//! What a cluster broker needs from the engine that links the nodes (Redis or NATS): publish
//! bytes on a channel without waiting, subscriptions the engine confirms, the messages of
//! the subscribed channels (handed over at construction), and the shared public history
//! (`REPLAY_PUBLIC`): appended with the publish, read by replaying joins.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

/// Entries of the shared history kept per topic: as many as the memory history keeps
/// (Supabase replays at most 25).
pub const HISTORY_DEPTH: usize = crate::publish::history::RING;

/// The shared public history an engine keeps, when `REPLAY_PUBLIC` is on.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Prefix of the engine's history names (`CLUSTER_NAMESPACE`).
    pub namespace: String,
    /// How long an idle topic's history lives (`MESSAGES_RETENTION_HOURS`; zero: forever).
    pub retention: Duration,
}

/// A read of the shared history: its newest entries (at most [`HISTORY_DEPTH`]), oldest
/// first, or why it could not be read.
pub type HistoryRead<'a> = Pin<Box<dyn Future<Output = Result<Vec<Bytes>, String>> + Send + 'a>>;

/// What the engine hands to the broker.
#[derive(Debug)]
pub enum Incoming {
    /// A message of a subscribed channel.
    Message(Bytes),
    /// The link came back after a loss and every wanted channel is subscribed again:
    /// whatever was published meanwhile is lost, so state must be exchanged again.
    Resubscribed,
}

/// What an engine's publishing task takes, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// A message for a channel; with a sender, the number of receivers is wanted.
    Publish(String, Bytes, Option<oneshot::Sender<Option<usize>>>),
    /// A message for a channel (the second name), appended first to the shared history
    /// named first, in the same round trip.
    Kept(String, String, Bytes),
    /// Answered once everything queued before it is with the engine; dropped if it could
    /// not be delivered there.
    Barrier(oneshot::Sender<()>),
}

/// A link to the engine. Implementations reconnect on their own and resubscribe what is
/// subscribed; while the engine is away, publishing drops messages (each node keeps
/// serving its own members) and the state is visible through [`Engine::connected`].
pub trait Engine: Send + Sync {
    /// Queues `payload` for `channel` (taken by value: callers build it per message, so it
    /// is not copied again); false when it had to be dropped (queue full).
    fn publish(&self, channel: String, payload: Bytes) -> bool;

    /// Like [`Engine::publish`], appending `payload` to the shared history `history` first
    /// (in the same round trip), when the engine keeps one: a join that reads the history
    /// after subscribing then has each message in the history or live, never neither.
    fn publish_kept(&self, history: String, channel: String, payload: Bytes) -> bool;

    /// Reads the shared history `history` (see [`HistoryRead`]).
    fn history(&self, history: String) -> HistoryRead<'_>;

    /// The engine keeps the shared history ([`Engine::publish_kept`] appends to it);
    /// false without `REPLAY_PUBLIC`, or on a NATS server without JetStream.
    fn keeps_history(&self) -> bool;

    /// Publishes `payload` on `channel` (in order with [`Engine::publish`]) and tells how
    /// many subscribers received it, or `None` once sent when the engine cannot count them
    /// (NATS); the receiver is dropped when the engine is away.
    fn publish_counted(&self, channel: &str, payload: Bytes) -> oneshot::Receiver<Option<usize>>;

    /// Completes once every message published before it is with the engine (Redis
    /// answered the PUBLISH; NATS echoed a probe sent after them); the receiver is dropped
    /// when they could not be handed over.
    fn handed_over(&self) -> oneshot::Receiver<()>;

    /// Subscribes to `channel` (idempotent); the receiver completes once the engine has
    /// confirmed it (dropped unanswered when the link is gone).
    fn subscribe(&self, channel: &str) -> oneshot::Receiver<()>;

    /// Unsubscribes from `channel`.
    fn unsubscribe(&self, channel: &str);

    /// [`Engine::publish_counted`] answers with a count.
    fn counts_receivers(&self) -> bool;

    /// The subscription link is up.
    fn connected(&self) -> bool;

    /// Short name for logs and `/api/health` (`redis`, `nats`).
    fn name(&self) -> &'static str;
}
