//! Broadcast from clients over the WebSocket (self, ack, payload limit) into the fan-out.
//! REST broadcasts are in [`crate::api`]; both go out through [`crate::publish::Publisher::broadcast`].
//! Broadcasts that ask for `persist` are stored first ([`persist`]).

pub mod persist;
pub mod replay;

use realtime_protocol::encode::Status;
use realtime_protocol::persist::Persist;
use realtime_protocol::{errors, BroadcastMessage};
use tracing::info;

use crate::app::App;
use crate::channel::Channel;

/// Fans out a client's broadcast, stored first when it asks for `persist`. Returns the
/// reply to send, if any (only with `ack`).
pub async fn from_client(
    app: &App,
    ch: &Channel,
    msg: BroadcastMessage,
    persist: Option<Persist>,
) -> Option<(Status, String)> {
    if msg.payload_len() > ch.limits.max_payload_bytes() {
        info!(topic = %ch.key.topic, len = msg.payload_len(), reason = "payload_size", "broadcast payload over the limit");
        crate::observability::limit_rejected("payload_size");
        let response = format!("{{\"error\":\"{}\"}}", errors::PAYLOAD_SIZE_EXCEEDED);
        return ch.broadcast_ack.then_some((Status::Error, response));
    }
    if let Some(p) = persist {
        return persist::from_client(app, ch, msg, p).await;
    }
    let exclude = (!ch.broadcast_self).then_some(ch.id);
    app.publish.broadcast(&ch.key, &msg, exclude);
    ch.broadcast_ack.then(|| (Status::Ok, "{}".to_owned()))
}
