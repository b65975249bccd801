//! `POST /api/broadcast/:topic/events/:event`: the body is the payload, JSON or raw
//! bytes. Receivers get a user broadcast (binary type 4 on V2, JSON on V1, nothing on V1
//! for a binary payload).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use realtime_protocol::{errors, BroadcastMessage, Encoding};
use tracing::{debug, info};

use super::read_body;
use crate::app::App;
use crate::auth::Claims;
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
    let private = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "private" && v == "true"))
        .unwrap_or(false);
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
    let n = app.broadcast(&key, &msg, None);
    debug!(topic = %key.topic, delivered = n, "REST single broadcast");
    empty(StatusCode::ACCEPTED)
}
