//! Current state read by `/api/health` and by `/metrics` at scrape time: open
//! connections and channels (plain atomics, updated on open/close), and each replication
//! stream's progress (updated by the replication tasks).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Open WebSocket connections.
pub static CONNECTIONS: AtomicI64 = AtomicI64::new(0);
/// Joined public channels.
pub static PUBLIC_CHANNELS: AtomicI64 = AtomicI64::new(0);
/// Joined private channels.
pub static PRIVATE_CHANNELS: AtomicI64 = AtomicI64::new(0);
/// `postgres_changes` bindings of joined channels.
pub static PG_SUBSCRIPTIONS: AtomicI64 = AtomicI64::new(0);

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the process start (uptime is counted from the first call).
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// Seconds since [`mark_start`].
pub fn uptime_seconds() -> u64 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs()
}

/// Joined channels (public and private).
pub fn channels() -> i64 {
    PUBLIC_CHANNELS.load(Ordering::Relaxed) + PRIVATE_CHANNELS.load(Ordering::Relaxed)
}

/// Where a replication stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Not connected yet (start delay, first connection attempt).
    Starting,
    /// Its publication does not exist yet: nothing to stream, not an outage.
    WaitingForPublication,
    /// Connected and streaming.
    Streaming,
    /// The connection was lost or cannot be made; reconnecting.
    Down,
    /// Stopped for good by an error retrying cannot fix (authentication, missing
    /// publication, undecodable data): an operator must act, then restart the server.
    Failed,
}

impl StreamState {
    /// The name reported by `/api/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Starting => "starting",
            StreamState::WaitingForPublication => "waiting_for_publication",
            StreamState::Streaming => "streaming",
            StreamState::Down => "down",
            StreamState::Failed => "failed",
        }
    }

    /// Whether this state is healthy.
    pub fn ok(self) -> bool {
        matches!(self, StreamState::Streaming | StreamState::WaitingForPublication)
    }
}

/// Progress of one replication stream, shared between its task and the endpoints.
#[derive(Debug)]
pub struct ReplicationStats {
    /// Stream name in health and metric labels.
    pub name: &'static str,
    state: AtomicU8,
    /// Newest server end of WAL seen (XLogData `walEnd` or keepalive `wal_end`).
    wal_end: AtomicU64,
    /// Everything before this position is handled (what is acknowledged).
    processed: AtomicU64,
    /// Delay between the commit of the last delivered transaction and its delivery (µs);
    /// 0 once caught up with the server. -1 = never measured.
    lag_us: AtomicI64,
    /// Why the stream stopped for good ([`StreamState::Failed`]).
    error: Mutex<Option<String>>,
}

/// Postgres Changes' stream.
pub static PG_CHANGES: ReplicationStats = ReplicationStats::new("postgres_changes");
/// Broadcast from Database's stream.
pub static DB_BROADCAST: ReplicationStats = ReplicationStats::new("broadcast_from_database");

impl ReplicationStats {
    const fn new(name: &'static str) -> ReplicationStats {
        ReplicationStats {
            name,
            state: AtomicU8::new(0),
            wal_end: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            lag_us: AtomicI64::new(-1),
            error: Mutex::new(None),
        }
    }

    /// Records a state change.
    pub fn set(&self, state: StreamState) {
        let v = match state {
            StreamState::Starting => 0,
            StreamState::WaitingForPublication => 1,
            StreamState::Streaming => 2,
            StreamState::Down => 3,
            StreamState::Failed => 4,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// The stream stopped for good because of `error`.
    pub fn fail(&self, error: String) {
        // A poisoned lock only means a panic elsewhere while holding it; the value is
        // a plain string, still valid.
        *crate::sync::lock(&self.error, "replication error") = Some(error);
        self.set(StreamState::Failed);
    }

    /// Why the stream stopped for good, if it did.
    pub fn error(&self) -> Option<String> {
        crate::sync::lock(&self.error, "replication error").clone()
    }

    /// The current state.
    pub fn state(&self) -> StreamState {
        match self.state.load(Ordering::Relaxed) {
            1 => StreamState::WaitingForPublication,
            2 => StreamState::Streaming,
            3 => StreamState::Down,
            4 => StreamState::Failed,
            _ => StreamState::Starting,
        }
    }

    /// The server's end of WAL, as last reported by it.
    pub fn server_wal_end(&self, lsn: u64) {
        self.wal_end.fetch_max(lsn, Ordering::Relaxed);
    }

    /// A transaction committed at `commit_time_us` (unix µs) and ending at `end_lsn` was
    /// delivered and acknowledged.
    pub fn delivered(&self, end_lsn: u64, commit_time_us: i64) {
        self.processed.fetch_max(end_lsn, Ordering::Relaxed);
        let lag = (crate::clock::now_ms().saturating_mul(1000) - commit_time_us).max(0);
        self.lag_us.store(lag, Ordering::Relaxed);
    }

    /// Nothing is in flight and the server's end of WAL is `wal_end`: caught up.
    pub fn caught_up(&self, wal_end: u64) {
        self.server_wal_end(wal_end);
        self.processed.fetch_max(wal_end, Ordering::Relaxed);
        self.lag_us.store(0, Ordering::Relaxed);
    }

    /// WAL the server has that is not handled yet, in bytes (`None` before the stream
    /// ever reported a position).
    pub fn lag_bytes(&self) -> Option<u64> {
        let end = self.wal_end.load(Ordering::Relaxed);
        (end > 0).then(|| end.saturating_sub(self.processed.load(Ordering::Relaxed)))
    }

    /// See `lag_us`; `None` before anything was measured.
    pub fn lag_seconds(&self) -> Option<f64> {
        let us = self.lag_us.load(Ordering::Relaxed);
        (us >= 0).then(|| us as f64 / 1e6)
    }
}

/// Both streams.
pub fn streams() -> [&'static ReplicationStats; 2] {
    [&PG_CHANGES, &DB_BROADCAST]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_follows_positions() {
        let s = ReplicationStats::new("t");
        assert_eq!(s.lag_bytes(), None);
        assert_eq!(s.lag_seconds(), None);
        s.server_wal_end(1000);
        assert_eq!(s.lag_bytes(), Some(1000));
        s.delivered(600, crate::clock::now_ms() * 1000 - 2_000_000);
        assert_eq!(s.lag_bytes(), Some(400));
        let lag = s.lag_seconds().unwrap_or_default();
        assert!((1.9..5.0).contains(&lag), "{lag}");
        s.caught_up(1200);
        assert_eq!(s.lag_bytes(), Some(0));
        assert_eq!(s.lag_seconds(), Some(0.0));
        assert_eq!(s.state(), StreamState::Starting);
        s.set(StreamState::Down);
        assert!(!s.state().ok());
        s.set(StreamState::WaitingForPublication);
        assert!(s.state().ok());
        assert_eq!(s.error(), None);
        s.fail("ERROR 28P01: password authentication failed".into());
        assert_eq!(s.state(), StreamState::Failed);
        assert!(!s.state().ok());
        assert_eq!(
            s.error().as_deref(),
            Some("ERROR 28P01: password authentication failed")
        );
    }
}
