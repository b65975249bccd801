//! Broadcast from clients over the WebSocket (self, ack, payload limit) into the fan-out.
//! REST broadcasts are in [`crate::api`]; both go out through [`crate::publish::Publisher::broadcast`].
//! Broadcasts that ask for `persist` are stored first ([`persist`]).

pub mod persist;
pub mod replay;

use realtime_protocol::encode::Status;
use realtime_protocol::persist::Persist;
use realtime_protocol::{errors, BroadcastMessage};
use tracing::{info, warn};

use crate::app::App;
use crate::fanout::{ChannelId, TopicKey};

/// A channel's broadcast settings, from its join config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub echo: bool,
    /// `broadcast.ack`: each broadcast is answered with a reply.
    pub ack: bool,
}

/// The channel a client broadcast comes from, as this capability sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The channel (left out of delivery without `self`).
    pub id: ChannelId,
    /// Its topic.
    pub key: &'a TopicKey,
    /// Its settings.
    pub settings: Settings,
    /// Largest payload its tier allows.
    pub max_payload_bytes: usize,
}

impl Sender<'_> {
    /// Who is left out of delivery: the sender itself, unless it joined with `self`.
    fn exclude(&self) -> Option<ChannelId> {
        (!self.settings.echo).then_some(self.id)
    }
}

/// Server-wide events per second over the tenant's limit: the sending channel is then
/// shut down with [`errors::TOO_MANY_MESSAGES`], as Supabase does.
pub fn rate_exceeded(app: &App, topic: &str) -> bool {
    if !app.limits.events_exceeded() {
        return false;
    }
    crate::observability::limit_rejected("events_per_second");
    warn!(%topic, reason = errors::TOO_MANY_MESSAGES, "closing channel: events over the limit");
    true
}

/// Fans out a client's broadcast, stored first when it asks for `persist`. Returns the
/// reply to send, if any (only with `ack`).
pub async fn from_client(
    app: &App,
    sender: Sender<'_>,
    msg: BroadcastMessage,
    persist: Option<Persist>,
) -> Option<(Status, String)> {
    if msg.payload_len() > sender.max_payload_bytes {
        info!(topic = %sender.key.topic, len = msg.payload_len(), reason = "payload_size", "broadcast payload over the limit");
        crate::observability::limit_rejected("payload_size");
        let response = format!("{{\"error\":\"{}\"}}", errors::PAYLOAD_SIZE_EXCEEDED);
        return sender.settings.ack.then_some((Status::Error, response));
    }
    if let Some(p) = persist {
        return persist::from_client(app, sender, msg, p).await;
    }
    app.publish.broadcast(sender.key, &msg, sender.exclude());
    if !sender.settings.ack {
        return None;
    }
    // In a cluster the ack means the other nodes can have it: the engine took it.
    app.publish.handed_over().await;
    Some((Status::Ok, "{}".to_owned()))
}
