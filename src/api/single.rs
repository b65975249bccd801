//! `POST /api/broadcast/:topic/events/:event`: the body is the payload, JSON or raw
//! bytes. Receivers get a user broadcast (binary type 4 on V2, JSON on V1, nothing on V1
//! for a binary payload). With `?persist=true` or `?persist[ttl]=N` (private only) the
//! message is stored for replay first ([`crate::broadcast::persist`]).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use realtime_protocol::persist::Persist;
use realtime_protocol::{errors, BroadcastMessage, Encoding};
use tracing::{debug, info, warn};

use super::read_body;
use crate::app::App;
use crate::auth::Claims;
use crate::broadcast::persist;
use crate::fanout::TopicKey;
use crate::http::{empty, json_error, Body};

pub(super) async fn handle(
    app: &App,
    req: Request<Incoming>,
    claims: &Claims,
    topic: &str,
    event: &str,
) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let encoding = match content_type.as_deref() {
        None | Some("") | Some("application/json") => Encoding::Json,
        Some("application/octet-stream") => Encoding::Binary,
        Some(other) => {
            info!(content_type = other, "REST single broadcast: unsupported media type");
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "error",
                errors::rest::UNSUPPORTED_MEDIA_TYPE,
            );
        }
    };
    let query = req.uri().query().unwrap_or_default().as_bytes();
    let private = form_urlencoded::parse(query).any(|(k, v)| k == "private" && v == "true");
    let persist = persist_param(query);
    if let Some(p) = persist {
        // Refused before anything else: nothing is delivered.
        if let Some(why) = persist::refusal(app, private, p) {
            info!(%topic, reason = why, "REST persisted broadcast refused");
            let status = if why == errors::persist::NO_DATABASE {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return json_error(status, "message", why);
        }
    }
    if private && !super::may_write_private(app, claims, topic).await {
        info!(%topic, "refusing private REST broadcast: not authorized");
        return json_error(StatusCode::FORBIDDEN, "message", errors::rest::UNAUTHORIZED);
    }
    let Some(mut body) = read_body(req, app.config.max_frame_size).await else {
        return super::too_large();
    };
    if body.len() > app.limits.for_claims(claims).max_payload_bytes() {
        crate::observability::limit_rejected("payload_size");
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "message",
            errors::rest::PAYLOAD_TOO_LARGE,
        );
    }
    if encoding == Encoding::Json {
        if body.iter().all(u8::is_ascii_whitespace) {
            body = Bytes::from_static(b"{}");
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return json_error(StatusCode::BAD_REQUEST, "message", "Invalid JSON body");
        }
    }
    let msg = BroadcastMessage::User {
        event: event.to_owned(),
        metadata: None,
        encoding,
        body,
    };
    let key = TopicKey::new(&format!("realtime:{topic}"), private);
    if let (Some(p), Some(pg)) = (persist, &app.pg) {
        let content = match persist::Content::of(&msg) {
            Ok(c) => c,
            Err(why) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", why),
        };
        let ttl = persist::ttl_secs(p, app.config.messages_retention_hours);
        let id = match persist::store(pg.pool(), topic, &content, ttl).await {
            Ok(id) => id,
            Err(e) => {
                warn!(%topic, error = %crate::realtime_schema::migrations::describe("storing a REST broadcast", &e), "REST persisted broadcast not stored, not delivered");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "message",
                    errors::persist::STORE_FAILED,
                );
            }
        };
        let n = app.publish.stored(&key, &content.live(&id), &id, None);
        debug!(topic = %key.topic, %id, delivered = n, ?ttl, "REST persisted broadcast");
        return empty(StatusCode::ACCEPTED);
    }
    let n = app.publish.broadcast(&key, &msg, None);
    debug!(topic = %key.topic, delivered = n, "REST single broadcast");
    empty(StatusCode::ACCEPTED)
}

/// `persist=true` or `persist[ttl]=<seconds>` (supabase-js `httpSend`); `persist[ttl]`
/// wins when both are given, and a value that is neither true, false nor a positive
/// integer is a request the endpoint refuses.
fn persist_param(query: &[u8]) -> Option<Persist> {
    let mut flag = None;
    let mut ttl = None;
    for (k, v) in form_urlencoded::parse(query) {
        match k.as_ref() {
            "persist" => {
                flag = match v.as_ref() {
                    "true" => Some(Persist::Default),
                    "false" => None,
                    _ => Some(Persist::Invalid(realtime_protocol::persist::INVALID_PERSIST)),
                }
            }
            "persist[ttl]" => {
                ttl = Some(match v.parse::<u64>() {
                    Ok(n) if n >= 1 => Persist::Ttl(n),
                    _ => Persist::Invalid(realtime_protocol::persist::INVALID_TTL),
                })
            }
            _ => {}
        }
    }
    ttl.or(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_query_as_http_send_writes_it() {
        assert_eq!(persist_param(b"private=true&persist=true"), Some(Persist::Default));
        assert_eq!(
            persist_param(b"private=true&persist%5Bttl%5D=30"),
            Some(Persist::Ttl(30))
        );
        assert_eq!(persist_param(b"persist[ttl]=30&persist=true"), Some(Persist::Ttl(30)));
        assert_eq!(persist_param(b"private=true"), None);
        assert_eq!(persist_param(b"persist=false"), None);
        assert!(matches!(persist_param(b"persist=yes"), Some(Persist::Invalid(_))));
        for bad in ["0", "-1", "1.5", "x", ""] {
            let q = format!("persist[ttl]={bad}");
            assert!(
                matches!(persist_param(q.as_bytes()), Some(Persist::Invalid(_))),
                "{bad}"
            );
        }
    }
}
