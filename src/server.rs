//! The accept loop and HTTP routing: WebSocket upgrades go to [`crate::transport`], API
//! calls to [`crate::api`]. Knows nothing about channels.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::http::{json_error, plain, Body};

/// Serves until `shutdown` flips to true, then waits for connections to drain (at most
/// the configured shutdown timeout).
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small frames are the norm; do not let Nagle delay them.
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    let span = crate::observability::connection_span(peer);
                    tokio::spawn(tracing::Instrument::instrument(async move {
                        let service = service_fn(move |req| route(app.clone(), req));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
                        if let Err(e) = conn.await {
                            debug!(%peer, error = %e, "HTTP connection ended with an error");
                        }
                    }, span));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    info!("shutting down: draining connections");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(app.config.shutdown_timeout_ms);
    // Every connection task holds a clone of `app`; when only ours is left, all are done.
    while Arc::strong_count(&app) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/realtime/v1/websocket" | "/socket/websocket" => crate::transport::upgrade::handle(app, req).await,
        "/healthcheck" | "/realtime/v1/healthcheck" => plain(StatusCode::OK, "ok"),
        p => match p.strip_prefix("/realtime/v1").unwrap_or(p) {
            obs if crate::observability::endpoints::handles(req.method(), obs) => {
                crate::observability::endpoints::route(&app, req.headers(), obs).await
            }
            api if api.starts_with("/api/") => crate::api::route(app, req, api).await,
            _ => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
        },
    };
    Ok(response)
}
