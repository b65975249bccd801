//! The WebSocket upgrade on `/realtime/v1/websocket` and `/socket/websocket`: picks the
//! serializer from `vsn`, authenticates the connection's apikey, and hands the socket to
//! [`super::connection`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use realtime_protocol::{errors, Vsn};
use tracing::{info, warn};

use crate::app::App;
use crate::clock::now_ms;
use crate::http::{json_error, plain};

/// Answers an upgrade request: 101 and a spawned connection, or the HTTP error Supabase
/// sends (after its connect backoff).
pub async fn handle(app: Arc<App>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());

    let Some(vsn) = Vsn::from_query(param("vsn")) else {
        info!(vsn = ?param("vsn"), "refusing upgrade: unsupported vsn");
        return plain(StatusCode::FORBIDDEN, "");
    };
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }

    // The `x-api-key` header wins over the `apikey` query parameter.
    let token = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| param("apikey").map(str::to_owned));
    let backoff = Duration::from_millis(app.config.connect_error_backoff_ms);
    let Some(token) = token else {
        info!("refusing upgrade: API key is missing");
        tokio::time::sleep(backoff).await;
        return json_error(StatusCode::UNAUTHORIZED, "error", errors::upgrade::API_KEY_MISSING);
    };
    if let Err(e) = app.verifier.verify(&token, now_ms() / 1000) {
        info!(error = ?e, "refusing upgrade: bad apikey");
        tokio::time::sleep(backoff).await;
        return json_error(StatusCode::UNAUTHORIZED, "error", &e.upgrade_message());
    }
    // Supabase's connect-time limits: concurrent connections, then joins per second.
    let limits = &app.limits;
    let refused = if limits.connections() >= limits.max_concurrent_users {
        Some(("concurrent_users", errors::upgrade::TOO_MANY_USERS))
    } else if limits.joins_exceeded() {
        Some(("joins_per_second", errors::upgrade::TOO_MANY_JOINS))
    } else {
        None
    };
    if let Some((reason, text)) = refused {
        info!(reason, "refusing upgrade: limit");
        crate::observability::limit_rejected(reason);
        tokio::time::sleep(backoff).await;
        return json_error(StatusCode::TOO_MANY_REQUESTS, "error", text);
    }
    // Counted from here, so a burst of upgrades cannot all pass the check above.
    let counted = limits.connection();

    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "WebSocket handshake failed");
            return plain(StatusCode::BAD_REQUEST, "bad WebSocket handshake");
        }
    };
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        match upgrade.await {
            Ok(ws) => {
                let _counted = counted;
                super::connection::run(app, ws.into_inner(), vsn, token).await
            }
            Err(e) => warn!(error = %e, "WebSocket upgrade did not complete"),
        }
    }));
    response.map(|_| Full::new(Bytes::new()))
}
