//! `presence` pushes: track and untrack (protocol.md §5.1), with the limits Supabase's
//! presence handler owns (server-wide presence events per second, calls per client
//! window, track payload size).

use realtime_protocol::encode::{self, Status};
use realtime_protocol::errors;
use realtime_protocol::event::PresenceCommand;
use serde_json::Value;
use tracing::debug;

use crate::app::App;
use crate::fanout::{ChannelId, TopicKey};
use crate::limits::{CallWindow, ClientLimits};

/// A channel's presence state.
#[derive(Debug, Default)]
pub struct Member {
    /// Presence key (`config.presence.key`, or generated at join).
    pub key: String,
    /// Recent presence pushes, for the per-client presence rate.
    pub calls: CallWindow,
}

/// The channel a presence push comes from, as this capability sees it.
pub struct Pusher<'a> {
    /// The channel (owner of its presence).
    pub id: ChannelId,
    /// Its topic.
    pub key: &'a TopicKey,
    /// Its presence state.
    pub member: &'a mut Member,
    /// Its tier's limits.
    pub limits: &'a ClientLimits,
}

/// Counts a presence push and says which limit it breaks, if any: server-wide presence
/// events per second, the channel's calls per window, the track payload size. A broken
/// limit shuts the channel down with that text.
pub fn limit_broken(app: &App, pusher: &mut Pusher<'_>, cmd: &PresenceCommand) -> Option<&'static str> {
    let limits = &app.limits;
    limits.presence_events.add(1);
    if limits.presence_exceeded() {
        return Some(errors::TOO_MANY_PRESENCE_MESSAGES);
    }
    let max = pusher.limits.client_presence_max_calls;
    let window = pusher.limits.client_presence_window;
    if !pusher.member.calls.allow(max, window) {
        return Some(errors::CLIENT_PRESENCE_RATE);
    }
    if let PresenceCommand::Track(payload) = cmd {
        let size = serde_json::to_vec(payload).map_or(0, |v| v.len());
        if size > pusher.limits.max_payload_bytes() {
            return Some(errors::TRACK_SIZE_EXCEEDED);
        }
    }
    None
}

/// Applies a presence command for a channel. `reply` is called first, so the client
/// sees its reply before the `presence_diff` its change causes (as with Supabase).
/// `may_track`: the channel's write permission for presence (always on public topics).
pub fn handle(app: &App, pusher: Pusher<'_>, may_track: bool, cmd: PresenceCommand, reply: impl FnOnce(Status, &str)) {
    match cmd {
        PresenceCommand::Track(_) if !may_track => reply(Status::Error, "{}"),
        PresenceCommand::Track(Value::Object(payload)) => {
            reply(Status::Ok, "{}");
            app.presence
                .track(&app.publish, pusher.key, pusher.id, &pusher.member.key, payload);
        }
        PresenceCommand::Track(_) => reply(Status::Error, &encode::reason(errors::PRESENCE_NOT_A_MAP)),
        PresenceCommand::Untrack => {
            reply(Status::Ok, "{}");
            app.presence.untrack(&app.publish, pusher.key, pusher.id);
        }
        // Supabase answers a presence push without `event` with ok and does nothing.
        PresenceCommand::Missing => reply(Status::Ok, "{}"),
        PresenceCommand::Unknown(event) => {
            debug!(topic = %pusher.key.topic, %event, "unknown presence event");
            reply(Status::Error, "{}");
        }
    }
}
