//! `presence` pushes: track and untrack (protocol.md §5.1).

use realtime_protocol::encode::{self, Status};
use realtime_protocol::errors;
use realtime_protocol::event::PresenceCommand;
use serde_json::Value;
use tracing::debug;

use crate::app::App;
use crate::channel::Channel;

/// Applies a presence command for a channel. `reply` is called first, so the client
/// sees its reply before the `presence_diff` its change causes (as with Supabase).
pub fn handle(app: &App, ch: &Channel, cmd: PresenceCommand, reply: impl FnOnce(Status, &str)) {
    match cmd {
        PresenceCommand::Track(Value::Object(payload)) => {
            reply(Status::Ok, "{}");
            app.presence
                .track(&app.publish, &ch.key, ch.id, &ch.presence_key, payload);
        }
        PresenceCommand::Track(_) => reply(Status::Error, &encode::reason(errors::PRESENCE_NOT_A_MAP)),
        PresenceCommand::Untrack => {
            reply(Status::Ok, "{}");
            app.presence.untrack(&app.publish, &ch.key, ch.id);
        }
        // Supabase answers a presence push without `event` with ok and does nothing.
        PresenceCommand::Missing => reply(Status::Ok, "{}"),
        PresenceCommand::Unknown(event) => {
            debug!(topic = %ch.key.topic, %event, "unknown presence event");
            reply(Status::Error, "{}");
        }
    }
}
