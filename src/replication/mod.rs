//! One replication driver for every capability fed by a logical replication slot
//! (Postgres Changes, Broadcast from Database). A capability is a [`Sink`]; the driver owns,
//! once for all of them:
//!
//! * the life of the stream: the slot is created once the publication exists, then the
//!   start delay (so clients of a previous run rejoin before the backlog is delivered),
//!   waiting for the publication, reconnecting with backoff, the state `/api/health` shows;
//! * the error policy: a transient error ([`WalError::is_transient`]: network, server
//!   restarting, slot busy) reconnects; any other (authentication, missing publication,
//!   undecodable data) stops this stream with one error log and `/api/health` showing it,
//!   since retrying cannot fix it;
//! * reading: decoded and assembled changes ([`realtime_wal::change_stream`]) grouped
//!   into [`Batch`]es by [`batch::Batcher`] (group commit, chunks of a large transaction,
//!   and what not to hand over twice);
//! * acknowledgement: a transaction's end is acknowledged only once the sink's future for
//!   the batch that completes it has finished, so nothing committed is lost across
//!   restarts (the slot is persistent); keepalives advance the slot when nothing is in
//!   flight; status updates are throttled ([`ACK_DELAY`]) and sent on shutdown.
//!
//! Delivery: while the process runs, each change is handed to the sink once, even when
//! the connection or Postgres restarts mid-transaction. Across a restart of this process,
//! what was handed but not yet acknowledged is handed again (at least once).

pub mod batch;
mod in_flight;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use realtime_wal::change::Relation;
use realtime_wal::change_stream::{ChangeStream, Received};
use realtime_wal::stream::ReplicationOptions;
use realtime_wal::WalError;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use self::batch::{Batch, Transaction, CHUNK};
use self::batch::{Batcher, Completed};
use self::in_flight::InFlight;
use crate::observability::state::{ReplicationStats, StreamState};
use crate::realtime_schema::migrations;

/// How often the position is reported while idle.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Status updates are at least this far apart: commits in between share one, so a burst
/// of small transactions does not cost one write each.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// First wait before reconnecting, and between checks for a missing publication.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between checks for a missing publication.
const MAX_PUBLICATION_POLL: Duration = Duration::from_secs(2);

/// What to stream and where to report.
pub struct Settings {
    /// Connection settings (`DATABASE_URL`).
    pub db: tokio_postgres::Config,
    /// Persistent replication slot.
    pub slot: String,
    /// Publication to stream.
    pub publication: String,
    /// `application_name` of the replication connection (`pg_stat_replication`).
    pub application_name: String,
    /// Wait before the first session (`REPLICATION_START_DELAY_MS`).
    pub start_delay: Duration,
    /// Where the stream's state and progress are published (health, metrics); its name
    /// labels the logs.
    pub stats: &'static ReplicationStats,
    /// Becomes true when the server shuts down: the handled position is acknowledged and
    /// the driver stops.
    pub shutdown: watch::Receiver<bool>,
}

/// A capability fed by the driver.
///
/// Contract: batches come in commit order, at most [`Sink::IN_FLIGHT`] at a time (when
/// that many futures of [`Sink::on_changes`] are unfinished, the next batch is read only
/// once the oldest has finished; futures are first polled in the order of their batches).
/// Each change is handed once while the process runs; after a restart of the process,
/// the changes of transactions not yet acknowledged come again. The hooks other than
/// `on_changes` must not block.
pub trait Sink: Send + Sync + 'static {
    /// How many batches may be in flight at once. With more than one, the sink keeps its
    /// effects in commit order itself (the driver acknowledges in order regardless).
    const IN_FLIGHT: usize = 1;

    /// Whether the publication exists (with what it must contain). While it does not,
    /// the stream waits and reports `waiting_for_publication`: creating the slot first
    /// would make every change committed meanwhile undecodable ("publication does not
    /// exist") for good.
    fn publication_ready(&self) -> impl Future<Output = Result<bool, tokio_postgres::Error>> + Send;

    /// Logged once when the publication is missing: how to create it.
    fn missing_publication_hint(&self) -> &'static str;

    /// A session started streaming.
    fn on_streaming(&self) {}

    /// A session that was streaming ended (before the reconnect, or for good).
    fn on_lost(&self) {}

    /// A table's shape, sent before its first change in a session and after it changed.
    fn on_relation(&self, _relation: &Relation) {}

    /// Delivers a batch (never empty of changes). When the future finishes, and those of
    /// every earlier batch, the changes are handled: the driver acknowledges the
    /// transactions the batch completes ([`Transaction::end_lsn`]). These changes are
    /// never handed again in this process, even if the session breaks meanwhile (the
    /// driver lets the futures in flight finish before reconnecting).
    fn on_changes(&self, batch: &Batch) -> impl Future<Output = ()> + Send;
}

/// Why a session ended without an error.
enum Ended {
    /// The server is shutting down.
    Shutdown,
}

/// Runs the stream until shutdown, or until an error that retrying cannot fix.
pub async fn run<S: Sink>(settings: Settings, sink: S) {
    let mut driver = Driver {
        shutdown: settings.shutdown.clone(),
        settings,
        sink: Arc::new(sink),
        batcher: Batcher::default(),
        in_flight: InFlight::default(),
    };
    driver.run().await;
}

struct Driver<S> {
    settings: Settings,
    sink: Arc<S>,
    batcher: Batcher,
    /// Batches handed to the sink whose futures have not finished.
    in_flight: InFlight,
    shutdown: watch::Receiver<bool>,
}

impl<S: Sink> Driver<S> {
    async fn run(&mut self) {
        let name = self.settings.stats.name;
        // The slot first (so nothing is missed), then let clients of a previous run rejoin
        // before the backlog is delivered.
        let s = &self.settings;
        if let Err(e) = crate::postgres_changes::pool::ensure_slot(&s.db, &s.slot, &s.publication).await {
            warn!(stream = name, slot = %s.slot, error = %migrations::describe("checking the replication slot", &e), "cannot check the replication slot now; streaming will create it");
        }
        if self.sleep(self.settings.start_delay).await {
            return;
        }
        let mut backoff = MIN_BACKOFF;
        let mut poll = MIN_BACKOFF;
        let mut told_missing = false;
        loop {
            match self.sink.publication_ready().await {
                Ok(true) => {}
                Ok(false) => {
                    self.settings.stats.set(StreamState::WaitingForPublication);
                    if !told_missing {
                        told_missing = true;
                        warn!(stream = name, publication = %self.settings.publication, "the publication does not exist yet: {}; waiting for it", self.sink.missing_publication_hint());
                    } else {
                        debug!(stream = name, publication = %self.settings.publication, "publication still missing");
                    }
                    if self.sleep(poll).await {
                        return;
                    }
                    poll = (poll * 2).min(MAX_PUBLICATION_POLL);
                    continue;
                }
                Err(e) if !migrations::is_transient(&e) => {
                    self.fail(migrations::describe("checking the publication", &e));
                    return;
                }
                Err(e) => {
                    self.settings.stats.set(StreamState::Down);
                    warn!(stream = name, error = %migrations::describe("checking the publication", &e), "cannot check the publication; retrying");
                    if self.sleep(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            poll = MIN_BACKOFF;
            let mut streamed = false;
            let result = self.session(&mut streamed).await;
            // What the sink has must be handled before the stream starts again: its
            // transactions are not handed twice (they are not acknowledged, so Postgres
            // sends them again, and the batcher skips them).
            self.in_flight.drain().await;
            if streamed {
                self.sink.on_lost();
                backoff = MIN_BACKOFF;
            }
            match result {
                Ok(Ended::Shutdown) => return,
                Err(e) if !e.is_transient() => {
                    self.fail(e.to_string());
                    return;
                }
                Err(e) => {
                    self.settings.stats.set(StreamState::Down);
                    warn!(stream = name, error = %e, "replication stopped; reconnecting");
                }
            }
            if self.sleep(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Stops the stream for good: one error log, and health shows it.
    fn fail(&self, reason: String) {
        let s = &self.settings;
        error!(
            stream = s.stats.name,
            slot = %s.slot,
            publication = %s.publication,
            error = %reason,
            "replication stopped for good: retrying cannot fix this error; fix it and restart the server"
        );
        s.stats.fail(reason);
    }

    /// Sleeps `d`; true when the server is shutting down instead.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = shutdown_signalled(&mut self.shutdown) => true,
        }
    }

    /// One replication session: streams until an error or shutdown. Sets `streamed` once
    /// connected.
    async fn session(&mut self, streamed: &mut bool) -> Result<Ended, WalError> {
        let s = &self.settings;
        let stats = s.stats;
        let opts = ReplicationOptions {
            slot: s.slot.clone(),
            publication: s.publication.clone(),
            temporary_slot: false,
            application_name: s.application_name.clone(),
        };
        let mut stream = ChangeStream::connect(&s.db, &opts).await?;
        *streamed = true;
        stats.set(StreamState::Streaming);
        info!(stream = stats.name, slot = %s.slot, publication = %s.publication, "replication streaming");
        self.sink.on_streaming();
        self.batcher.session_start();

        let mut status = tokio::time::interval(STATUS_EVERY);
        status.tick().await;
        let mut last_status = Instant::now();
        // When set, a status update is due at that instant (see ACK_DELAY).
        let mut ack_due: Option<Instant> = None;
        loop {
            let ack_at = ack_due.unwrap_or_else(|| Instant::now() + STATUS_EVERY);
            let first = tokio::select! {
                // Acknowledge what was handled before the process exits, so a restart does
                // not deliver it again.
                () = shutdown_signalled(&mut self.shutdown) => {
                    if let Some(done) = self.in_flight.drain().await {
                        stream.set_flushed(done.end_lsn);
                    }
                    stream.send_status().await?;
                    info!(stream = stats.name, flushed = %stream.flushed(), "last handled position acknowledged for shutdown");
                    return Ok(Ended::Shutdown);
                }
                done = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    // Acknowledged only now that the sink has handled its changes.
                    if let Some(Completed { end_lsn, commit_time_us }) = done {
                        stats.delivered(end_lsn.0, commit_time_us);
                        stream.set_flushed(end_lsn);
                        if last_status.elapsed() >= ACK_DELAY {
                            stream.send_status().await?;
                            last_status = Instant::now();
                        } else {
                            ack_due.get_or_insert(last_status + ACK_DELAY);
                        }
                    }
                    continue;
                }
                // Full: read on once the oldest batch is handled.
                msg = stream.recv(), if self.in_flight.len() < S::IN_FLIGHT => msg?,
                () = tokio::time::sleep_until(ack_at), if ack_due.is_some() => {
                    ack_due = None;
                    stream.send_status().await?;
                    last_status = Instant::now();
                    continue;
                }
                _ = status.tick() => {
                    stream.send_status().await?;
                    last_status = Instant::now();
                    continue;
                }
            };
            // Group commit: take every message that is already here (up to a chunk), so
            // that when changes arrive faster than they are handled, one batch covers many
            // transactions instead of one.
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Received::Event(event) => self.batcher.push(event)?,
                    Received::Relation(relation) => self.sink.on_relation(&relation),
                    Received::Keepalive { wal_end } => {
                        // Nothing of ours is in flight: everything up to the server's end
                        // of WAL is handled, so let it release that WAL.
                        if self.batcher.idle() && self.in_flight.is_empty() {
                            stream.set_flushed(wal_end);
                            stats.caught_up(wal_end.0);
                        }
                    }
                }
                if !self.batcher.full() {
                    // `recv` is cancel safe: polling it once and dropping it loses nothing.
                    next = stream.recv().now_or_never().transpose()?;
                }
            }
            stats.server_wal_end(stream.server_wal_end().0);
            if !self.batcher.ready() {
                continue;
            }
            let (batch, completed) = self.batcher.take();
            if batch.changes.is_empty() {
                // Nothing to hand; acknowledged in turn, after the batches before it.
                self.in_flight.push(Box::pin(std::future::ready(())), completed);
            } else {
                let sink = self.sink.clone();
                self.in_flight
                    .push(Box::pin(async move { sink.on_changes(&batch).await }), completed);
            }
        }
    }
}

/// Resolves once `shutdown` is true; never if its sender is gone without saying so.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}
