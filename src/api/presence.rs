//! The presence API of one topic (`:topic` is the channel name without `realtime:`,
//! URL-encoded; `?private=true` selects the private topic of that name):
//!
//! * `GET /api/channels/:topic/presence`: `{"online": <presence_state payload>,
//!   "last_seen": {KEY: "<RFC 3339>"}}`, `online` exactly as clients get it in
//!   `presence_state` (`{KEY: {"metas": [...]}}`, metas with `phx_ref`).
//! * `POST /api/channels/:topic/presence` `{"key", "meta", "ttl_seconds"}`: tracks a
//!   server-set entry (meta marked `"server": true`) until its TTL; the same key again
//!   replaces it and restarts the TTL.
//! * `DELETE /api/channels/:topic/presence/:key`: removes a server-set entry.
//!
//! Who may: the service role; on a private topic also a user whose RLS policies on
//! `realtime.messages` let it read (GET) or insert (POST, DELETE) with extension
//! `presence`, exactly as a private join decides.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use realtime_protocol::errors;
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::read_body;
use crate::app::App;
use crate::auth::Claims;
use crate::fanout::TopicKey;
use crate::http::{empty, json_error, response, Body};
use crate::postgres_changes::payload::commit_timestamp;
use crate::presence::now_millis;
use crate::presence::server::Refused;

/// Longest TTL of a server-set entry, in seconds (one day).
pub const MAX_TTL_SECONDS: u64 = 86_400;

/// Refusal texts of this endpoint (422 unless said otherwise).
mod text {
    pub const BAD_BODY: &str =
        "Body must be {\"key\": non-empty string, \"meta\": object, \"ttl_seconds\": 1 to 86400}";
    pub const TOO_MANY: &str = "Too many server presence entries on this topic";
    pub const NOT_FOUND: &str = "Not Found";
}

/// What a request may do with a topic's presence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The topic of a request and whether it is private.
pub(super) fn topic_key(req: &Request<Incoming>, topic: &str) -> TopicKey {
    let query = req.uri().query().unwrap_or_default().as_bytes();
    let private = form_urlencoded::parse(query).any(|(k, v)| k == "private" && v == "true");
    TopicKey::new(&format!("realtime:{topic}"), private)
}

/// The service role may do anything; on a private topic a user may what RLS allows;
/// anyone else gets 403.
async fn allowed(app: &App, claims: &Claims, key: &TopicKey, access: Access) -> bool {
    if claims.role == "service_role" {
        return true;
    }
    if !key.private {
        info!(topic = %key.topic, role = %claims.role, "presence API: public topics need the service role");
        return false;
    }
    let Some(pg) = &app.pg else {
        info!(topic = %key.topic, "presence API: a private topic without a database");
        return false;
    };
    let topic = key.sub_topic();
    let result = match access {
        Access::Read => crate::authorization::read(pg.pool(), topic, claims, true)
            .await
            .map(|r| r.presence),
        Access::Write => crate::authorization::write(pg.pool(), topic, claims)
            .await
            .map(|w| w.presence),
    };
    match result {
        Ok(allowed) => allowed,
        Err(e) => {
            warn!(topic, error = %e, "presence API: RLS authorization failed");
            false
        }
    }
}

fn forbidden() -> Response<Body> {
    json_error(StatusCode::FORBIDDEN, "message", errors::rest::UNAUTHORIZED)
}

/// `GET`: who is online and who left recently.
pub(super) async fn get(app: &App, claims: &Claims, key: &TopicKey) -> Response<Body> {
    if !allowed(app, claims, key, Access::Read).await {
        return forbidden();
    }
    let snap = app.presence.snapshot(key);
    let last_seen: Map<String, Value> = snap
        .last_seen
        .into_iter()
        .map(|(k, ms)| (k, Value::String(commit_timestamp(ms as i64 * 1000))))
        .collect();
    // `online` is spliced as the hub rendered it: no re-serialization of 10,000 metas.
    let last_seen = Value::Object(last_seen).to_string();
    let mut body = String::with_capacity(snap.online_json.len() + last_seen.len() + 26);
    body.push_str("{\"online\":");
    body.push_str(&snap.online_json);
    body.push_str(",\"last_seen\":");
    body.push_str(&last_seen);
    body.push('}');
    response(StatusCode::OK, "application/json", body)
}

/// The body of a `POST`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Track {
    key: String,
    #[serde(default)]
    meta: Map<String, Value>,
    ttl_seconds: u64,
}

/// `POST`: tracks or refreshes a server-set entry.
pub(super) async fn post(app: &App, req: Request<Incoming>, claims: &Claims, key: TopicKey) -> Response<Body> {
    if !allowed(app, claims, &key, Access::Write).await {
        return forbidden();
    }
    let Some(body) = read_body(req, app.config.max_frame_size).await else {
        return super::too_large();
    };
    let track = match serde_json::from_slice::<Track>(&body) {
        Ok(t) if !t.key.is_empty() && (1..=MAX_TTL_SECONDS).contains(&t.ttl_seconds) => t,
        Ok(_) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", text::BAD_BODY),
        Err(e) => {
            info!(topic = %key.topic, error = %e, "server presence: bad body");
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", text::BAD_BODY);
        }
    };
    // The same bound as a socket's track payload.
    let size = serde_json::to_vec(&track.meta).map_or(0, |v| v.len());
    if size > app.limits.for_claims(claims).max_payload_bytes() {
        crate::observability::limit_rejected("presence_track_size");
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", errors::TRACK_SIZE_EXCEEDED);
    }
    app.limits.presence_events.add(1);
    if app.limits.presence_exceeded() {
        crate::observability::limit_rejected("presence_events_per_second");
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "message",
            errors::TOO_MANY_PRESENCE_MESSAGES,
        );
    }
    let expires_ms = now_millis() + track.ttl_seconds * 1000;
    let max = app.config.presence_server_max_per_topic;
    match app
        .presence
        .track_server(&app.publish, &key, &track.key, track.meta, expires_ms, max)
    {
        Ok(()) => {
            debug!(topic = %key.topic, key = %track.key, ttl = track.ttl_seconds, "server presence tracked");
            let body = serde_json::json!({
                "key": track.key,
                "expires_at": commit_timestamp(expires_ms as i64 * 1000),
            });
            response(StatusCode::OK, "application/json", body.to_string())
        }
        Err(Refused::TooMany) => {
            info!(topic = %key.topic, max, "server presence refused: too many entries");
            crate::observability::limit_rejected("presence_server_entries");
            json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", text::TOO_MANY)
        }
    }
}

/// `DELETE`: removes a server-set entry (404 when there is none under that key).
pub(super) async fn delete(app: &App, claims: &Claims, key: &TopicKey, presence_key: &str) -> Response<Body> {
    if !allowed(app, claims, key, Access::Write).await {
        return forbidden();
    }
    if app.presence.untrack_server(&app.publish, key, presence_key) {
        debug!(topic = %key.topic, key = presence_key, "server presence removed");
        empty(StatusCode::NO_CONTENT)
    } else {
        json_error(StatusCode::NOT_FOUND, "message", text::NOT_FOUND)
    }
}
