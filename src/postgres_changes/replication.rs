//! The replication task: stream the slot, assemble transactions, deliver them, and
//! acknowledge a transaction's end only after its frames are queued, so nothing committed
//! is lost across restarts (the slot is persistent) and nothing delivered to a connection
//! that stayed up is delivered again. Reconnects with backoff; while Postgres is away,
//! subscribers are told, and told again when it is back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use realtime_protocol::errors;
use realtime_wal::change::{Assembler, Event, RowChange};
use realtime_wal::pgoutput::{self, LogicalMessage};
use realtime_wal::stream::{ReplicationMessage, ReplicationOptions, ReplicationStream};
use realtime_wal::WalError;
use tracing::{debug, info, warn};

use super::{dispatch, PgChanges};
use crate::observability::state::{StreamState, PG_CHANGES as STATS};

/// Most changes per RLS round (a bigger transaction is delivered in chunks, in order).
const CHUNK: usize = 512;
/// How often the position is reported while idle.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Runs forever: one replication session after another.
pub async fn run(pg: Arc<PgChanges>, start_delay: Duration) {
    // The slot first (so nothing is missed), then let clients of a previous run rejoin
    // before the backlog is delivered.
    if let Err(e) = super::pool::ensure_slot(&pg.config, &pg.slot, &pg.publication).await {
        warn!(error = %e, "cannot check the replication slot now; streaming will create it");
    }
    tokio::time::sleep(start_delay).await;
    let mut backoff = Duration::from_millis(250);
    let mut told_missing = false;
    loop {
        if let Ok(false) = pg.publication_exists().await {
            // Creating the slot before the publication exists would make every change
            // committed meanwhile undecodable ("publication does not exist") for good.
            // Look again soon: changes are only captured once the slot exists.
            STATS.set(StreamState::WaitingForPublication);
            if !told_missing {
                warn!(publication = %pg.publication, "the publication does not exist yet: create it (create publication … for table …); waiting for it");
                told_missing = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let result = session(&pg).await;
        let was_up = pg.connected.swap(false, Ordering::SeqCst);
        STATS.set(StreamState::Down);
        match result {
            Ok(()) => info!("replication session ended"),
            Err(e) => warn!(error = %e, transient = e.is_transient(), "replication stopped; reconnecting"),
        }
        if was_up {
            pg.outage.store(true, Ordering::SeqCst);
            pg.notify_all(false, errors::PG_UNABLE_TO_CONNECT);
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(pg: &Arc<PgChanges>) -> Result<(), WalError> {
    let opts = ReplicationOptions {
        slot: pg.slot.clone(),
        publication: pg.publication.clone(),
        temporary_slot: false,
        application_name: "realtime-rs".into(),
    };
    let mut stream = ReplicationStream::connect(&pg.config, &opts).await?;
    info!(slot = %pg.slot, publication = %pg.publication, "replication streaming");
    pg.connected.store(true, Ordering::SeqCst);
    STATS.set(StreamState::Streaming);
    if pg.outage.swap(false, Ordering::SeqCst) {
        // Back after an outage: re-resolve every channel and say so.
        pg.resubscribe_all();
    }

    let mut assembler = Assembler::new();
    let mut batch = Batch::default();
    let mut in_transaction = false;
    // Set for a transaction this process already delivered (redelivered after a
    // Postgres restart): its changes are dropped, its end acknowledged again.
    let mut replayed = false;
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.tick().await;
    loop {
        let msg = tokio::select! {
            msg = stream.recv() => msg?,
            _ = status.tick() => {
                stream.send_status().await?;
                continue;
            }
        };
        let mut next = Some(msg);
        // Group commit: take every message that is already here (up to a chunk), so
        // that when changes arrive faster than they are checked, one RLS round covers
        // many transactions instead of one.
        while let Some(msg) = next.take() {
            match msg {
                ReplicationMessage::XLogData { data, end, .. } => {
                    STATS.server_wal_end(end.0);
                    let message = pgoutput::decode_bytes(&data)?;
                    if let LogicalMessage::Relation(r) = &message {
                        pg.relation_seen(r);
                    }
                    match assembler.push(message)? {
                        Some(Event::Begin {
                            commit_time_us,
                            final_lsn,
                            xid,
                        }) => {
                            in_transaction = true;
                            batch.commit_us = commit_time_us;
                            batch.xid = xid;
                            replayed = final_lsn.0 < pg.last_acked.load(Ordering::SeqCst);
                            if replayed {
                                debug!(%final_lsn, "skipping a transaction already delivered");
                            }
                        }
                        Some(Event::Change(_)) if replayed => {}
                        Some(Event::Change(change)) => {
                            batch.changes.push(change);
                            batch.times.push(batch.commit_us);
                            if batch.xids.last() != Some(&batch.xid) {
                                batch.xids.push(batch.xid);
                            }
                        }
                        Some(Event::Commit { end_lsn, .. }) => {
                            in_transaction = false;
                            replayed = false;
                            batch.ack = Some(end_lsn);
                        }
                        Some(Event::Truncate { .. }) => debug!("TRUNCATE is not delivered (as in Supabase)"),
                        None => {}
                    }
                }
                ReplicationMessage::Keepalive { wal_end, .. } => {
                    // Nothing of ours is in flight: everything up to the server's end of
                    // WAL is handled, so let it release that WAL.
                    if !in_transaction && batch.is_empty() {
                        stream.set_flushed(wal_end);
                        STATS.caught_up(wal_end.0);
                    } else {
                        STATS.server_wal_end(wal_end.0);
                    }
                }
            }
            if batch.changes.len() < CHUNK {
                // `recv` is cancel safe: polling it once and dropping it loses nothing.
                next = stream.recv().now_or_never().transpose()?;
            }
        }
        if in_transaction && batch.changes.len() < CHUNK {
            continue;
        }
        if !batch.changes.is_empty() {
            dispatch::deliver(pg, &batch.changes, &batch.times, &batch.xids).await;
            batch.changes.clear();
            batch.times.clear();
            batch.xids.clear();
            if in_transaction {
                // The rest of this transaction comes in the next chunk.
                batch.xids.push(batch.xid);
            }
        }
        // Acknowledged only now that its changes are queued for every subscriber.
        if let Some(end_lsn) = batch.ack.take() {
            pg.last_acked.fetch_max(end_lsn.0, Ordering::SeqCst);
            STATS.delivered(end_lsn.0, batch.commit_us);
            stream.set_flushed(end_lsn);
            stream.send_status().await?;
        }
    }
}

/// Changes read but not yet delivered, and the last commit among them.
#[derive(Default)]
struct Batch {
    changes: Vec<RowChange>,
    /// Commit time of each change (unix µs).
    times: Vec<i64>,
    /// Commit time of the transaction being read.
    commit_us: i64,
    /// Transaction ids of the changes (each once).
    xids: Vec<u32>,
    /// Id of the transaction being read.
    xid: u32,
    /// End LSN of the last complete transaction in the batch.
    ack: Option<realtime_wal::Lsn>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.ack.is_none()
    }
}
