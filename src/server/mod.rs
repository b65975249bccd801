//! The accept loop and HTTP routing: WebSocket upgrades go to [`crate::transport`], API
//! calls to [`crate::api`]. Knows nothing about channels.
//!
//! Connections that are not WebSockets yet are bounded ([`pending`]): a header read
//! timeout, a cap that evicts the oldest, and an accept loop that survives running out of
//! file descriptors ([`accept`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

mod accept;
pub mod nofile;
mod pending;

pub use pending::Pending;

use crate::app::App;
use crate::http::{json_error, plain, Body};

/// A pending connection this old is taken for a stalled one when descriptors run out (a
/// real request is read and answered in milliseconds).
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Serves until `shutdown` flips to true, then waits for connections to drain (at most
/// the configured shutdown timeout).
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>, pending_cap: usize) {
    let pending = Pending::new(pending_cap);
    let mut http = http1::Builder::new();
    // Covers the request head, the wait for the first byte, and keep-alive waits between
    // requests (hyper restarts the timer for each head).
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(app.config.http_header_timeout_ms.max(1)));
    let http = Arc::new(http);
    let mut failures = accept::Failures::default();
    // Each HTTP connection task holds a clone; an upgraded WebSocket outlives its HTTP
    // task but is counted by `limits.connections()` from before the 101 until it closes.
    // Counting these, not references to `app`, lets an idle server exit at once: the
    // background tasks (presence flusher, replication) hold `app` for the process' life.
    let http_tasks = Arc::new(());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    failures.accepted();
                    // Small frames are the norm; do not let Nagle delay them.
                    let _ = stream.set_nodelay(true);
                    let (ticket, evicted) = pending.admit();
                    if evicted > 0 {
                        crate::observability::limit_rejected("pending_connections");
                        debug!(evicted, cap = pending.cap(), "pending connection cap reached: closed the oldest");
                    }
                    let app = app.clone();
                    let http = http.clone();
                    let span = crate::observability::connection_span(peer);
                    let task = http_tasks.clone();
                    tokio::spawn(tracing::Instrument::instrument(async move {
                        let _task = task;
                        let mut stop = app.shutdown.clone();
                        let stopping = async move {
                            let _ = stop.wait_for(|stopping| *stopping).await;
                        };
                        let service = service_fn(move |req| route(app.clone(), req));
                        let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
                        let mut conn = std::pin::pin!(conn);
                        // The ticket lives until the connection is upgraded (hyper hands the
                        // socket over and this future ends) or closed. An idle keep-alive
                        // connection closes at shutdown; one serving a request finishes it.
                        let mut ticket = ticket;
                        tokio::select! {
                            ended = conn.as_mut() => if let Err(e) = ended {
                                debug!(%peer, error = %e, "HTTP connection ended with an error");
                            },
                            _ = &mut ticket.evicted => debug!(%peer, "pending connection evicted to make room"),
                            () = stopping => {
                                conn.as_mut().graceful_shutdown();
                                if let Err(e) = conn.await {
                                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                                }
                            }
                        }
                        drop(ticket);
                    }, span));
                }
                Err(e) => {
                    let out_of_files = accept::out_of_files(&e);
                    // Free a descriptor for the next connection: the oldest pending
                    // connection is the likeliest to be a stalled one, unless it is
                    // younger than any real request takes.
                    if out_of_files && pending.evict_oldest_older_than(STALLED_AFTER) {
                        crate::observability::limit_rejected("pending_connections");
                    }
                    let pause = failures.failed(&e, out_of_files, pending.len());
                    tokio::time::sleep(pause).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    info!("shutting down: draining connections");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(app.config.shutdown_timeout_ms);
    while (Arc::strong_count(&http_tasks) > 1 || app.limits.connections() > 0) && tokio::time::Instant::now() < deadline
    {
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
            other => match crate::inspector::route(&app, req.uri(), req.headers(), other) {
                Some(page) => page,
                None => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
            },
        },
    };
    Ok(response)
}
