//! `persist`: a client broadcast (WebSocket push, or the REST single endpoint) stored in
//! `realtime.messages` so later joins asking for `replay` get it, on private channels only.
//!
//! * The row is inserted first, then the message is delivered live through the normal
//!   fan-out carrying the row's id (`meta.id`), so a channel that replayed it skips its
//!   live copy. The row is marked `rs_delivered_live`, which Broadcast from Database skips:
//!   every member gets the message once.
//! * Only persisted broadcasts wait on the database; ordinary ones never reach this module.
//! * A `persist` the server refuses (public channel, bad value, no database) or cannot store
//!   is not delivered either, as an oversized payload is not: an error means nothing
//!   happened, so a client may retry without duplicates.
//! * Lifetime: `ttl` seconds, else `MESSAGES_RETENTION_HOURS` (0 = until deleted by hand),
//!   as `rs_expires_at`; replay leaves expired rows out and retention deletes them.

use bytes::Bytes;
use realtime_protocol::broadcast::json_map;
use realtime_protocol::encode::Status;
use realtime_protocol::persist::Persist;
use realtime_protocol::{errors, BroadcastMessage, Encoding};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::Sender;
use crate::app::App;
use crate::postgres_changes::pool::Pool;

/// Longest lifetime honoured (200 years), so the expiry stays a valid timestamp.
const MAX_TTL_SECS: u64 = 200 * 366 * 24 * 3600;

/// Seconds a message asking for `p` is kept: its `ttl`, else the retention; `None` when
/// nothing expires it (retention 0 and no `ttl`).
pub fn ttl_secs(p: Persist, retention_hours: u64) -> Option<u64> {
    match p {
        Persist::Ttl(secs) => Some(secs.min(MAX_TTL_SECS)),
        _ if retention_hours == 0 => None,
        _ => Some(retention_hours.saturating_mul(3600).min(MAX_TTL_SECS)),
    }
}

/// What a stored broadcast is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The user event.
    pub event: String,
    /// JSON text (`Ok`) or bytes (`Err`), as [`crate::broadcast::replay::StoredBody::User`].
    pub payload: Result<Bytes, Bytes>,
    /// Came as a whole map (text push): delivered live as a map again.
    pub from_map: bool,
}

impl Content {
    /// The event and payload of `msg`. A map without a string `event` cannot be stored; a
    /// missing or null `payload` is stored as `{}`.
    pub fn of(msg: &BroadcastMessage) -> Result<Content, &'static str> {
        match msg {
            BroadcastMessage::User {
                event, encoding, body, ..
            } => Ok(Content {
                event: event.clone(),
                payload: match encoding {
                    Encoding::Json => Ok(body.clone()),
                    Encoding::Binary => Err(body.clone()),
                },
                from_map: false,
            }),
            BroadcastMessage::Map(map) => {
                let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(map) else {
                    return Err(errors::persist::NO_EVENT);
                };
                let Some(Value::String(event)) = m.remove("event") else {
                    return Err(errors::persist::NO_EVENT);
                };
                let payload = match m.remove("payload") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(v) => v.to_string(),
                };
                Ok(Content {
                    event,
                    payload: Ok(Bytes::from(payload)),
                    from_map: true,
                })
            }
        }
    }

    /// The live copy, carrying the stored row's id. A map loses its `persist` member
    /// (receivers see `{"event","meta","payload","type"}`, as a replay shows it).
    pub fn live(&self, id: &str) -> BroadcastMessage {
        let meta = serde_json::json!({ "id": id }).to_string();
        match &self.payload {
            Ok(json) if self.from_map => {
                BroadcastMessage::Map(Bytes::from(json_map(&self.event, Some(meta.as_bytes()), json)))
            }
            Ok(body) | Err(body) => BroadcastMessage::User {
                event: self.event.clone(),
                metadata: Some(Bytes::from(meta)),
                encoding: if self.payload.is_ok() {
                    Encoding::Json
                } else {
                    Encoding::Binary
                },
                body: body.clone(),
            },
        }
    }
}

/// Inserts `c` as a private broadcast of `sub_topic` (no `realtime:`) kept for `ttl`
/// seconds (`None`: until retention); returns the row id. Runs as the server's role: the
/// sender's write permission was checked before (RLS INSERT on `realtime.messages`).
pub async fn store(
    pool: &Pool,
    sub_topic: &str,
    c: &Content,
    ttl: Option<u64>,
) -> Result<String, tokio_postgres::Error> {
    let (json, binary): (Option<&str>, Option<&[u8]>) = match &c.payload {
        // JSON payloads were validated when they arrived.
        Ok(json) => (Some(std::str::from_utf8(json).unwrap_or("{}")), None),
        Err(bytes) => (None, Some(bytes.as_ref())),
    };
    let ttl = ttl.map(|s| s as f64);
    let conn = pool.checkout().await?;
    let row = conn
        .query_one(
            "insert into realtime.messages \
               (topic, extension, event, payload, binary_payload, private, rs_expires_at, rs_delivered_live) \
             values ($1, 'broadcast', $2, $3::text::jsonb, $4, true, \
               timezone('utc', now()) + make_interval(secs => $5::float8), true) \
             returning id::text",
            &[&sub_topic, &c.event, &json, &binary, &ttl],
        )
        .await?;
    row.try_get(0)
}

/// Why a `persist` request cannot be honoured before touching the database, if it cannot.
pub fn refusal(app: &App, private: bool, p: Persist) -> Option<&'static str> {
    if !private {
        return Some(errors::persist::PUBLIC_CHANNEL);
    }
    if let Persist::Invalid(why) = p {
        return Some(why);
    }
    if app.pg.is_none() {
        return Some(errors::persist::NO_DATABASE);
    }
    None
}

/// Stores then delivers a client's broadcast that asked for `persist` (write permission
/// and payload size already checked). Returns the reply to send, if any (only with `ack`):
/// ok `{"id"}`, or error `{"error": …}`.
pub async fn from_client(app: &App, sender: Sender<'_>, msg: BroadcastMessage, p: Persist) -> Option<(Status, String)> {
    let topic = &sender.key.topic;
    let error = |why: &str| {
        sender
            .settings
            .ack
            .then(|| (Status::Error, serde_json::json!({ "error": why }).to_string()))
    };
    if let Some(why) = refusal(app, sender.key.private, p) {
        info!(%topic, reason = why, "persisted broadcast refused");
        return error(why);
    }
    let content = match Content::of(&msg) {
        Ok(c) => c,
        Err(why) => {
            info!(%topic, reason = why, "persisted broadcast refused");
            return error(why);
        }
    };
    let pg = app.pg.as_ref()?;
    let ttl = ttl_secs(p, app.config.messages_retention_hours);
    let id = match store(pg.pool(), sender.key.sub_topic(), &content, ttl).await {
        Ok(id) => id,
        Err(e) => {
            warn!(%topic, error = %crate::realtime_schema::migrations::describe("storing a broadcast", &e), "persisted broadcast not stored, not delivered");
            return error(errors::persist::STORE_FAILED);
        }
    };
    let n = app
        .publish
        .stored(sender.key, &content.live(&id), &id, sender.exclude());
    debug!(%topic, %id, delivered = n, ?ttl, "persisted broadcast stored and delivered");
    if !sender.settings.ack {
        return None;
    }
    app.publish.handed_over().await;
    Some((Status::Ok, serde_json::json!({ "id": id }).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_defaults_to_the_retention() {
        assert_eq!(ttl_secs(Persist::Default, 72), Some(72 * 3600));
        assert_eq!(ttl_secs(Persist::Default, 0), None);
        assert_eq!(ttl_secs(Persist::Ttl(5), 0), Some(5));
        assert_eq!(ttl_secs(Persist::Ttl(u64::MAX), 1), Some(MAX_TTL_SECS));
    }

    #[test]
    fn map_content_and_live_copy() {
        let map = BroadcastMessage::Map(Bytes::from_static(
            br#"{"type":"broadcast","event":"e","payload":{"a":1},"persist":true}"#,
        ));
        let c = Content::of(&map).unwrap();
        assert_eq!(c.event, "e");
        assert_eq!(c.payload, Ok(Bytes::from_static(br#"{"a":1}"#)));
        let BroadcastMessage::Map(live) = c.live("x") else {
            panic!("a map stays a map")
        };
        let v: Value = serde_json::from_slice(&live).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "broadcast", "event": "e", "payload": {"a": 1}, "meta": {"id": "x"}})
        );
        let no_payload = BroadcastMessage::Map(Bytes::from_static(br#"{"event":"e"}"#));
        assert_eq!(Content::of(&no_payload).unwrap().payload, Ok(Bytes::from_static(b"{}")));
        for bad in [&br#"{"payload":{}}"#[..], br#"{"event":1}"#, b"[1]"] {
            let m = BroadcastMessage::Map(Bytes::copy_from_slice(bad));
            assert_eq!(Content::of(&m), Err(errors::persist::NO_EVENT));
        }
    }

    #[test]
    fn binary_live_copy_keeps_its_encoding() {
        let msg = BroadcastMessage::User {
            event: "b".into(),
            metadata: None,
            encoding: Encoding::Binary,
            body: Bytes::from_static(&[1, 2]),
        };
        let live = Content::of(&msg).unwrap().live("id-1");
        assert_eq!(
            live,
            BroadcastMessage::User {
                event: "b".into(),
                metadata: Some(Bytes::from_static(br#"{"id":"id-1"}"#)),
                encoding: Encoding::Binary,
                body: Bytes::from_static(&[1, 2]),
            }
        );
    }
}
