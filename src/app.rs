//! State shared by every connection and request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Verifier;
use crate::config::Config;
use crate::fanout::{ChannelId, Registry};
use crate::postgres_changes::PgChanges;
use crate::presence::state::ReplicaId;
use crate::presence::PresenceHub;

/// Everything a handler may need, behind one `Arc`.
pub struct App {
    /// Settings.
    pub config: Config,
    /// JWT verification.
    pub verifier: Verifier,
    /// Topic subscribers.
    pub registry: Registry,
    /// Presence per topic.
    pub presence: PresenceHub,
    /// Postgres Changes, when a database is configured.
    pub pg: Option<Arc<PgChanges>>,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    next_channel: AtomicU64,
}

impl App {
    /// Builds the shared state.
    pub fn new(
        config: Config,
        verifier: Verifier,
        pg: Option<Arc<PgChanges>>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<App> {
        Arc::new(App {
            config,
            verifier,
            registry: Registry::default(),
            presence: PresenceHub::new(ReplicaId(rand::random())),
            pg,
            shutdown,
            next_channel: AtomicU64::new(1),
        })
    }

    /// A process-unique channel id.
    pub fn new_channel_id(&self) -> ChannelId {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }
}

/// Wall-clock time in unix milliseconds (JWT `exp` is wall-clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
