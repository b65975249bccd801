//! `GET /api/ping`, `GET /api/health`, `GET /metrics` (each also under `/realtime/v1`).
//! None of them needs a JWT; `/metrics` needs `METRICS_TOKEN` when that is set.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

use super::state;
use crate::app::App;
use crate::http::{json_error, response, Body};

/// How long the health check waits for the database.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `path` (without `/realtime/v1`) and `method` are one of ours.
pub fn handles(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(path, "/api/ping" | "/api/health" | "/metrics")
}

/// Serves one of the paths [`handles`] accepts.
pub async fn route(app: &Arc<App>, headers: &HeaderMap, path: &str) -> hyper::Response<Body> {
    match path {
        "/api/ping" => response(StatusCode::OK, "application/json", r#"{"message":"Success"}"#),
        "/api/health" => health(app).await,
        _ => metrics(app, headers),
    }
}

/// `/api/health`: 200 when everything configured is up, 503 otherwise.
async fn health(app: &Arc<App>) -> hyper::Response<Body> {
    let mut body = Map::new();
    let connections = state::CONNECTIONS.load(Ordering::Relaxed).max(0);
    let channels = state::channels().max(0);
    let mut healthy = true;
    body.insert("connections".into(), json!(connections));
    body.insert("channels".into(), json!(channels));
    match app.config.database_url.as_deref() {
        None => {
            for k in [
                "db_connected",
                "replication_connected",
                "replication_lag_bytes",
                "replication_lag_seconds",
            ] {
                body.insert(k.into(), Value::Null);
            }
        }
        Some(url) => {
            let db = db_connected(url).await;
            let streams = state::streams();
            let replication = streams.iter().all(|s| s.state().ok());
            let lag_bytes = streams.iter().filter_map(|s| s.lag_bytes()).max();
            let lag_seconds = streams.iter().filter_map(|s| s.lag_seconds()).reduce(f64::max);
            let detail: Map<String, Value> = streams
                .iter()
                .map(|s| (s.name.to_owned(), json!(s.state().as_str())))
                .collect();
            healthy = db && replication;
            body.insert("db_connected".into(), json!(db));
            body.insert("replication_connected".into(), json!(replication));
            body.insert("replication_lag_bytes".into(), json!(lag_bytes));
            body.insert("replication_lag_seconds".into(), json!(lag_seconds));
            body.insert("replication".into(), Value::Object(detail));
            // A stream stopped for good says why (also logged once, at error level).
            let errors: Map<String, Value> = streams
                .iter()
                .filter_map(|s| s.error().map(|e| (s.name.to_owned(), json!(e))))
                .collect();
            if !errors.is_empty() {
                body.insert("replication_errors".into(), Value::Object(errors));
            }
        }
    }
    if let Some(cluster) = &app.cluster {
        // The engine's state does not make the node unhealthy: without it each node still
        // serves its own members, and a load balancer pulling every node would be worse.
        let (engine, connected) = cluster.engine_state();
        body.insert(
            "cluster".into(),
            json!({
                "node_id": cluster.node_id(),
                "engine": engine,
                "engine_connected": connected,
                "leader": cluster.is_leader(),
                "nodes_alive": cluster.live_nodes() + 1,
            }),
        );
    }
    body.insert("uptime_seconds".into(), json!(state::uptime_seconds()));
    body.insert("healthy".into(), json!(healthy));
    let status = if healthy {
        StatusCode::OK
    } else {
        debug!(?body, "health check: unhealthy");
        StatusCode::SERVICE_UNAVAILABLE
    };
    response(status, "application/json", Value::Object(body).to_string())
}

/// `select 1` on a connection of our own (not the RLS pool, which may be busy), opened
/// again when it was lost. Failures are logged at debug level: the replication tasks
/// already report an outage, and probes repeat every few seconds.
async fn db_connected(url: &str) -> bool {
    static PROBE: OnceLock<Option<(tokio_postgres::Config, Mutex<Option<Client>>)>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| match url.parse::<tokio_postgres::Config>() {
        Ok(config) => Some((config, Mutex::new(None))),
        Err(e) => {
            warn!(error = %e, "health: DATABASE_URL does not parse");
            None
        }
    });
    let Some((config, slot)) = probe else { return false };
    let check = async {
        let mut client = slot.lock().await;
        if let Some(c) = client.as_ref().filter(|c| !c.is_closed()) {
            return c.simple_query("select 1").await;
        }
        let (c, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "health: database connection ended");
            }
        });
        let result = c.simple_query("select 1").await;
        *client = Some(c);
        result
    };
    match tokio::time::timeout(DB_PROBE_TIMEOUT, check).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "health: database check failed");
            false
        }
        Err(_) => {
            debug!("health: database check timed out");
            false
        }
    }
}

/// `/metrics`: Prometheus text, behind `METRICS_TOKEN` when set.
fn metrics(app: &App, headers: &HeaderMap) -> hyper::Response<Body> {
    if let Some(expected) = app.config.observability.metrics_token.as_deref() {
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            info!(reason = "bad or missing metrics token", "refusing /metrics");
            return json_error(StatusCode::UNAUTHORIZED, "message", "Unauthorized");
        }
    }
    set_state_gauges(app);
    response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        super::metrics::render(),
    )
}

fn set_state_gauges(app: &App) {
    use metrics::gauge;
    gauge!("realtime_connections").set(state::CONNECTIONS.load(Ordering::Relaxed) as f64);
    gauge!("realtime_channels", "kind" => "public").set(state::PUBLIC_CHANNELS.load(Ordering::Relaxed) as f64);
    gauge!("realtime_channels", "kind" => "private").set(state::PRIVATE_CHANNELS.load(Ordering::Relaxed) as f64);
    gauge!("realtime_postgres_changes_subscriptions").set(state::PG_SUBSCRIPTIONS.load(Ordering::Relaxed) as f64);
    gauge!("realtime_presence_keys").set(app.presence.key_count() as f64);
    gauge!("realtime_uptime_seconds").set(state::uptime_seconds() as f64);
    if let Some(cluster) = &app.cluster {
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        gauge!("realtime_cluster_leader").set(flag(cluster.is_leader()));
        gauge!("realtime_cluster_engine_connected").set(flag(cluster.engine_state().1));
        gauge!("realtime_cluster_nodes_alive").set((cluster.live_nodes() + 1) as f64);
    }
    if app.config.database_url.is_some() {
        for s in state::streams() {
            let up = s.state().ok();
            gauge!("realtime_replication_connected", "stream" => s.name).set(if up { 1.0 } else { 0.0 });
            if let Some(b) = s.lag_bytes() {
                gauge!("realtime_replication_lag_bytes", "stream" => s.name).set(b as f64);
            }
            if let Some(secs) = s.lag_seconds() {
                gauge!("realtime_replication_lag_seconds", "stream" => s.name).set(secs);
            }
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn only_get_on_our_paths() {
        assert!(handles(&Method::GET, "/api/ping"));
        assert!(handles(&Method::GET, "/metrics"));
        assert!(!handles(&Method::POST, "/api/health"));
        assert!(!handles(&Method::GET, "/api/broadcast"));
    }
}
