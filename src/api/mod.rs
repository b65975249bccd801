//! The REST API: broadcast (batch and single), ping, and the channels and presence API
//! ([`channels`], [`presence`]). Statuses and bodies follow Supabase's (protocol.md
//! §6.4–6.5); the channels and presence API uses the same `{"message": ...}` errors.

mod batch;
mod channels;
mod presence;
mod single;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, Response, StatusCode};
use realtime_protocol::errors;
use tracing::info;

use crate::app::App;
use crate::auth::Claims;
use crate::clock::now_ms;
use crate::http::{json_error, response, Body};

/// Routes `/api/...` (the `/realtime/v1` prefix already removed).
pub async fn route(app: Arc<App>, req: Request<Incoming>, path: &str) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        return preflight();
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["api", "ping"]) => response(StatusCode::OK, "application/json", r#"{"message":"Success"}"#),
        (&Method::POST, ["api", "broadcast", rest @ ..]) => {
            let Some(claims) = authorize(&app, &req) else {
                return json_error(StatusCode::UNAUTHORIZED, "message", errors::rest::UNAUTHORIZED);
            };
            if app.limits.events_exceeded() {
                info!(
                    reason = "events_per_second",
                    "REST broadcast refused: events over the limit"
                );
                crate::observability::limit_rejected("events_per_second");
                let refused = json_error(StatusCode::TOO_MANY_REQUESTS, "message", errors::rest::RATE_LIMITED);
                return with_rate_headers(&app, refused);
            }
            let answer = match rest {
                [] => batch::handle(&app, req, &claims).await,
                [topic, "events", event] => {
                    let (topic, event) = (decode(topic), decode(event));
                    single::handle(&app, req, &claims, &topic, &event).await
                }
                _ => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
            };
            with_rate_headers(&app, answer)
        }
        (_, ["api", "channels", ..]) => channels_api(&app, req, &segments[2..]).await,
        _ => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
    }
}

/// `/api/channels...`: 401 without a valid token, then per route.
async fn channels_api(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    let Some(claims) = authorize(app, &req) else {
        return json_error(StatusCode::UNAUTHORIZED, "message", errors::rest::UNAUTHORIZED);
    };
    match (req.method().clone(), rest) {
        (Method::GET, [] | [""]) => {
            if claims.role != "service_role" {
                info!(role = %claims.role, "channels list refused: service role only");
                return json_error(StatusCode::FORBIDDEN, "message", errors::rest::UNAUTHORIZED);
            }
            channels::list(app, &req)
        }
        (Method::GET, [topic, "presence"]) => {
            let key = presence::topic_key(&req, &decode(topic));
            presence::get(app, &claims, &key).await
        }
        (Method::POST, [topic, "presence"]) => {
            let key = presence::topic_key(&req, &decode(topic));
            presence::post(app, req, &claims, key).await
        }
        (Method::DELETE, [topic, "presence", presence_key]) => {
            let key = presence::topic_key(&req, &decode(topic));
            presence::delete(app, &claims, &key, &decode(presence_key)).await
        }
        _ => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
    }
}

/// Supabase's rate headers: the averaged events per second (`x-rate-rolling`), the limit,
/// and what is left of it.
fn with_rate_headers(app: &App, mut r: Response<Body>) -> Response<Body> {
    let limits = &app.limits;
    let rolling = limits.events.rate();
    let limit = limits.max_events_per_second;
    let h = r.headers_mut();
    for (name, value) in [
        ("x-rate-rolling", rolling),
        ("x-rate-limit", limit),
        ("x-rate-limit-remaining", (limit - rolling).max(0.0)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{}", value.round() as u64)) {
            h.insert(name, v);
        }
    }
    r
}

/// `Authorization: Bearer <jwt>`, else the `apikey` header, verified like a socket's key.
fn authorize(app: &App, req: &Request<Incoming>) -> Option<Claims> {
    let headers = req.headers();
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let token = bearer.or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()));
    let Some(token) = token else {
        info!("REST request without a token");
        return None;
    };
    match app.verifier.verify(token.trim(), now_ms() / 1000) {
        Ok(claims) => Some(claims),
        Err(e) => {
            info!(error = ?e, "REST request with a bad token");
            None
        }
    }
}

/// May `claims` broadcast to the private `topic`? Asks the RLS policies; without a
/// database, nobody may.
async fn may_write_private(app: &App, claims: &Claims, topic: &str) -> bool {
    let Some(pg) = &app.pg else { return false };
    match crate::authorization::write(pg.pool(), topic, claims).await {
        Ok(w) => w.broadcast,
        Err(e) => {
            info!(topic, error = %e, "REST private write authorization failed");
            false
        }
    }
}

/// Reads a body up to `limit` bytes; `None` when it is longer or the read fails.
async fn read_body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Some(collected.to_bytes()),
        Err(e) => {
            info!(error = %e, "REST body refused");
            None
        }
    }
}

/// 413 for a body over the limit.
fn too_large() -> Response<Body> {
    crate::observability::limit_rejected("rest_body_size");
    json_error(StatusCode::PAYLOAD_TOO_LARGE, "message", "Payload Too Large")
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// CORS preflight: browsers calling the REST API from another origin.
fn preflight() -> Response<Body> {
    let mut r = crate::http::empty(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, apikey, content-type, x-client-info"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    r
}
