//! Operations: Prometheus metrics ([`metrics`]), replication and connection state
//! ([`state`]), the `/api/ping`, `/api/health` and `/metrics` endpoints ([`endpoints`]),
//! and log setup ([`logging`]).
//!
//! Hot paths only touch atomics: counters are pre-registered handles, gauges of current
//! state (connections, channels, presence keys, replication lag) are read from
//! [`state`] when `/metrics` is scraped.

pub mod endpoints;
pub mod logging;
pub mod metrics;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use self::metrics::limit_rejected;

/// Settings of this module (flattened into [`crate::config::Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ObsConfig {
    /// Bearer token `GET /metrics` requires (`Authorization: Bearer <token>`). Unset =
    /// the endpoint is open.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Log line format on stderr: `text` or `json` (one JSON object per line, with the
    /// connection's `conn_id` and `peer` on every line logged for a connection).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Starts the uptime clock and installs the metrics recorder (inside the runtime, before
/// anything records).
pub fn init() {
    state::mark_start();
    metrics::init();
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// The span every log line of one TCP connection (HTTP request or WebSocket) runs in.
pub fn connection_span(peer: SocketAddr) -> tracing::Span {
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    // At error level so that it is enabled under any RUST_LOG that logs anything: a
    // warning logged inside still carries the connection id.
    tracing::error_span!("conn", conn_id = id, %peer)
}
