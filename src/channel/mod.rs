//! A connection's joined channels. It types each client message and hands it to one
//! handler; the capabilities (broadcast, presence, postgres changes) live elsewhere.

mod join;
mod token;

use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use realtime_protocol::encode::{self, Status};
use realtime_protocol::event::ClientEvent;
use realtime_protocol::frame::{decode_binary, decode_text};
use realtime_protocol::{errors, persist, Inbound, Payload, Vsn, WireFrame};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::auth::Claims;
use crate::authorization;
use crate::broadcast;
use crate::clock::now_ms;
use crate::fanout::{ChannelId, TopicKey};
use crate::limits::ClientLimits;
use crate::presence::handler::{self as presence, Member, Pusher};
use crate::transport::outbox::Outbox;

/// One joined channel.
pub struct Channel {
    /// Process-unique id (fan-out and presence owner).
    pub id: ChannelId,
    /// Its fan-out topic.
    pub key: TopicKey,
    /// The join_ref of the join that created it; every push for it carries this.
    pub join_ref: Option<String>,
    /// Its broadcast settings.
    pub broadcast: crate::broadcast::Settings,
    /// Its presence key and call window.
    pub presence: Member,
    /// The token the channel runs under, and its claims.
    pub token: String,
    /// Claims of `token`.
    pub claims: Claims,
    /// Private channels: what the subscriber may read (both true on public channels).
    pub read: authorization::Read,
    /// Private channels: cached write permissions (`None` until first needed).
    pub write: Option<authorization::Write>,
    /// `postgres_changes` bindings as sent (empty when none).
    pub pg_bindings: Arc<Vec<serde_json::Map<String, serde_json::Value>>>,
    /// The limits of the token's tier.
    pub limits: Arc<ClientLimits>,
    /// `broadcast.replication_ready` not answered yet: by when (unix ms) the Broadcast
    /// from Database stream must run, or the channel is closed.
    pub replication_ready_by: Option<i64>,
}

/// A channel as the presence capability sees it.
fn pusher(ch: &mut Channel) -> Pusher<'_> {
    Pusher {
        id: ch.id,
        key: &ch.key,
        member: &mut ch.presence,
        limits: &ch.limits,
    }
}

/// How often a channel waiting for `replication_ready` looks at the stream.
const REPLICATION_READY_POLL_MS: i64 = 100;

/// The state of one WebSocket connection: its settings and joined channels.
/// Owned by the connection's task, so nothing here is locked.
pub struct Session {
    app: Arc<App>,
    vsn: Vsn,
    outbox: Arc<Outbox>,
    /// The connection's apikey JWT: the fallback token of every join.
    conn_token: String,
    /// Boxed: a map allocates several slots, and a Channel is a few hundred bytes.
    channels: AHashMap<String, Box<Channel>>,
}

impl Session {
    /// A session for a socket that authenticated with `conn_token`.
    pub fn new(app: Arc<App>, vsn: Vsn, outbox: Arc<Outbox>, conn_token: String) -> Session {
        Session {
            app,
            vsn,
            outbox,
            conn_token,
            channels: AHashMap::new(),
        }
    }

    /// Handles a text frame. Malformed frames are logged and dropped; the connection
    /// keeps working.
    pub async fn handle_text(&mut self, bytes: &[u8]) {
        match decode_text(self.vsn, bytes) {
            Ok(msg) => self.dispatch(msg).await,
            Err(e) => {
                warn!(error_code = "MalformedWebSocketMessage", error = %e, "dropping text frame")
            }
        }
    }

    /// Handles a binary frame (V2 user broadcast push).
    pub async fn handle_binary(&mut self, bytes: &[u8]) {
        match decode_binary(self.vsn, bytes) {
            Ok(msg) => self.dispatch(msg).await,
            Err(e) => {
                warn!(error_code = "MalformedWebSocketMessage", error = %e, "dropping binary frame")
            }
        }
    }

    // Handlers may wait on the database (private-channel authorization); messages of one
    // connection are handled in order, as Phoenix handles a channel's messages in order.
    async fn dispatch(&mut self, msg: Inbound<'_>) {
        let event = ClientEvent::parse(&msg);
        crate::observability::metrics::message_in(&event);
        let topic = msg.topic.as_ref();
        let ref_ = msg.ref_.as_deref();
        match event {
            ClientEvent::Heartbeat => self.reply(None, ref_, topic, Status::Ok, "{}"),
            ClientEvent::Join(req) => join::join(self, topic, msg.join_ref.as_deref(), ref_, req).await,
            ClientEvent::Leave => match self.channels.remove(topic) {
                Some(ch) => {
                    self.reply(ch.join_ref.as_deref(), ref_, topic, Status::Ok, "{}");
                    self.close_channel(ch, true);
                }
                // Phoenix answers a leave for a topic it does not know with ok.
                None => self.reply(msg.join_ref.as_deref(), ref_, topic, Status::Ok, "{}"),
            },
            _ if !self.channels.contains_key(topic) => {
                let reason = encode::reason(errors::UNMATCHED_TOPIC);
                self.reply(None, ref_, topic, Status::Error, &reason);
            }
            ClientEvent::AccessToken(token) => token::refresh(self, topic, token).await,
            ClientEvent::Broadcast(b) => {
                if broadcast::rate_exceeded(&self.app, topic) {
                    return self.shutdown_channel(topic, errors::TOO_MANY_MESSAGES);
                }
                if !self.ensure_write(topic).await.broadcast {
                    // Supabase drops an unauthorized broadcast silently, even with ack.
                    debug!(%topic, "broadcast without write permission dropped");
                    return;
                }
                // Only persisted broadcasts wait on the database (to be stored first).
                let persist = match msg.payload {
                    Payload::UserBroadcast { metadata, .. } => persist::from_metadata(metadata),
                    Payload::Json(raw) => persist::from_map(raw.get().as_bytes()),
                };
                if let Some(ch) = self.channels.get(topic) {
                    let sender = broadcast::Sender {
                        id: ch.id,
                        key: &ch.key,
                        settings: ch.broadcast,
                        max_payload_bytes: ch.limits.max_payload_bytes(),
                    };
                    let reply = broadcast::from_client(&self.app, sender, b, persist).await;
                    if let Some((status, response)) = reply {
                        let join_ref = ch.join_ref.clone();
                        self.reply(join_ref.as_deref(), ref_, topic, status, &response);
                    }
                }
            }
            ClientEvent::Presence(cmd) => {
                let broken = self
                    .channels
                    .get_mut(topic)
                    .and_then(|ch| presence::limit_broken(&self.app, &mut pusher(ch), &cmd));
                if let Some(reason) = broken {
                    crate::observability::limit_rejected("presence");
                    warn!(%topic, reason, "closing channel: presence limit");
                    return self.shutdown_channel(topic, reason);
                }
                let may_track = self.ensure_write(topic).await.presence;
                if let Some(ch) = self.channels.get_mut(topic) {
                    let (vsn, outbox) = (self.vsn, &self.outbox);
                    let join_ref = ch.join_ref.clone();
                    let reply = |status, response: &str| {
                        outbox.push(encode::reply(vsn, join_ref.as_deref(), ref_, topic, status, response));
                    };
                    presence::handle(&self.app, pusher(ch), may_track, cmd, reply);
                }
            }
            ClientEvent::Other(event) => debug!(%topic, %event, "ignoring unknown client event"),
        }
    }

    /// Write permissions of a channel: everything on public channels; on private ones the
    /// RLS answer, asked on first use and cached until the next token refresh.
    async fn ensure_write(&mut self, topic: &str) -> authorization::Write {
        let Some(ch) = self.channels.get(topic) else {
            return authorization::Write::default();
        };
        if !ch.key.private {
            return authorization::Write {
                broadcast: true,
                presence: true,
            };
        }
        if let Some(w) = ch.write {
            return w;
        }
        let Some(pg) = self.app.pg.clone() else {
            return authorization::Write::default();
        };
        let sub_topic = ch.key.sub_topic().to_owned();
        let claims = ch.claims.clone();
        let write = match authorization::write(pg.pool(), &sub_topic, &claims).await {
            Ok(w) => w,
            Err(e) => {
                warn!(%topic, error = %e, "write authorization failed: denying");
                return authorization::Write::default();
            }
        };
        if let Some(ch) = self.channels.get_mut(topic) {
            ch.write = Some(write);
        }
        write
    }

    /// Queues a `phx_reply`.
    fn reply(&self, join_ref: Option<&str>, ref_: Option<&str>, topic: &str, status: Status, response: &str) {
        crate::observability::metrics::out(crate::observability::metrics::Out::Reply, 1);
        self.send(encode::reply(self.vsn, join_ref, ref_, topic, status, response));
    }

    fn send(&self, frame: WireFrame) {
        self.outbox.push(frame);
    }

    /// Closes the socket with `code` after `delay_ms` (after a delayed join error).
    fn close_later(&self, code: u16, reason: &'static str, delay_ms: u64) {
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            outbox.push_control(crate::transport::outbox::Outgoing::Close(code, reason));
        });
    }

    /// Sends `frame` after `delay` (join error backoff) without holding up the connection.
    fn send_later(&self, frame: WireFrame, delay: Duration) {
        if delay.is_zero() {
            return self.send(frame);
        }
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            outbox.push(frame);
        });
    }

    /// Pushes a `system` message on a channel.
    fn system(&self, ch: &Channel, extension: &str, ok: bool, message: &str) {
        let payload = encode::system_payload(Some(ch.key.sub_topic()), extension, ok, message);
        crate::observability::metrics::out(crate::observability::metrics::Out::System, 1);
        self.send(encode::push(
            self.vsn,
            ch.join_ref.as_deref(),
            &ch.key.topic,
            "system",
            &payload,
        ));
    }

    /// Shuts a channel down from the server side: `system` error, then `phx_close`.
    fn shutdown_channel(&mut self, topic: &str, message: &str) {
        if let Some(ch) = self.channels.remove(topic) {
            self.system(&ch, "system", false, message);
            self.close_channel(ch, true);
        }
    }

    /// Leaves the fan-out and presence; with `notify`, tells the client with `phx_close`.
    fn close_channel(&self, ch: Box<Channel>, notify: bool) {
        crate::observability::metrics::channel_closed(&ch.key.topic, ch.key.private, ch.pg_bindings.len(), notify);
        self.app.presence.leave(&self.app.publish, &ch.key, ch.id);
        if let Some(pg) = &self.app.pg {
            pg.unsubscribe(ch.id);
        }
        if notify {
            self.send(encode::lifecycle(
                self.vsn,
                ch.join_ref.as_deref(),
                &ch.key.topic,
                "phx_close",
            ));
        }
    }

    /// When the connection's timer must next run [`Session::on_timer`] (unix ms): the
    /// next token expiry, and soon while a channel waits for `replication_ready`.
    pub fn next_timer_ms(&self) -> Option<i64> {
        let poll = now_ms() + REPLICATION_READY_POLL_MS;
        self.channels
            .values()
            .map(|c| {
                let exp = c.claims.exp.saturating_mul(1000);
                c.replication_ready_by.map_or(exp, |_| exp.min(poll))
            })
            .min()
    }

    /// Timed channel work: token expiry and `replication_ready` answers.
    pub fn on_timer(&mut self) {
        self.expire_tokens();
        self.answer_replication_ready();
    }

    /// Channels waiting for `replication_ready`: `Replication connection established` once
    /// the Broadcast from Database stream runs; past their deadline, closed as Supabase
    /// closes them.
    fn answer_replication_ready(&mut self) {
        let streaming =
            crate::observability::state::DB_BROADCAST.state() == crate::observability::state::StreamState::Streaming;
        let now = now_ms();
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.replication_ready_by.is_some_and(|by| streaming || now >= by))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in waiting {
            if !streaming {
                info!(%topic, "Broadcast from Database stream not running in time: closing the channel");
                self.shutdown_channel(&topic, errors::REPLICATION_NOT_READY);
                continue;
            }
            if let Some(ch) = self.channels.get_mut(&topic) {
                ch.replication_ready_by = None;
            }
            if let Some(ch) = self.channels.get(&topic) {
                self.system(ch, "system", true, errors::REPLICATION_READY);
            }
        }
    }

    /// Closes channels whose token has expired, as Supabase does: `system` error
    /// `Token has expired N seconds ago`, then `phx_close`.
    fn expire_tokens(&mut self) {
        let now = now_ms();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.claims.exp.saturating_mul(1000) <= now)
            .map(|(t, c)| (t.clone(), c.claims.exp))
            .collect();
        for (topic, exp) in expired {
            let ago = (now / 1000 - exp).max(0);
            debug!(%topic, ago, "channel token expired");
            self.shutdown_channel(&topic, &errors::token_expired(ago));
        }
    }

    /// Before an operator-initiated disconnect: tell every channel, as Supabase does.
    pub fn announce_disconnect(&self) {
        let payload = encode::system_payload(None, "system", true, errors::SERVER_REQUESTED_DISCONNECT);
        for ch in self.channels.values() {
            self.send(encode::fastlane(self.vsn, &ch.key.topic, "system", &payload));
        }
    }

    /// The socket is gone: leave every channel (presence leaves reach the others).
    pub fn terminate(&mut self) {
        for (_, ch) in std::mem::take(&mut self.channels) {
            self.close_channel(ch, false);
        }
    }
}
