//! The replication task: stream the slot, assemble transactions, deliver them, and
//! acknowledge a transaction's end only after its frames are queued, so nothing committed
//! is lost across restarts (the slot is persistent) and nothing delivered to a connection
//! that stayed up is delivered again. Reconnects with backoff; while Postgres is away,
//! subscribers are told, and told again when it is back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use realtime_protocol::errors;
use realtime_wal::change::{Assembler, Event, RowChange};
use realtime_wal::pgoutput::{self, LogicalMessage};
use realtime_wal::stream::{ReplicationMessage, ReplicationOptions, ReplicationStream};
use realtime_wal::WalError;
use tracing::{debug, info, warn};

use super::{dispatch, PgChanges};

/// Changes delivered per RLS round (a bigger transaction is delivered in chunks, in order).
const CHUNK: usize = 512;
/// How often the position is reported while idle.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Runs forever: one replication session after another.
pub async fn run(pg: Arc<PgChanges>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let result = session(&pg).await;
        let was_up = pg.connected.swap(false, Ordering::SeqCst);
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
    if pg.outage.swap(false, Ordering::SeqCst) {
        // Back after an outage: re-resolve every channel and say so.
        pg.resubscribe_all();
    }

    let mut assembler = Assembler::new();
    let mut pending: Vec<RowChange> = Vec::new();
    let mut commit_us = 0i64;
    let mut in_transaction = false;
    // Set for a transaction this process already delivered (redelivered after a
    // Postgres restart): its changes are dropped, its end acknowledged again.
    let mut replayed = false;
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.tick().await;
    loop {
        tokio::select! {
            msg = stream.recv() => match msg? {
                ReplicationMessage::XLogData { data, .. } => {
                    let message = pgoutput::decode_bytes(&data)?;
                    if let LogicalMessage::Relation(r) = &message {
                        pg.relation_seen(r);
                    }
                    match assembler.push(message)? {
                        Some(Event::Begin { commit_time_us, final_lsn, .. }) => {
                            in_transaction = true;
                            commit_us = commit_time_us;
                            replayed = final_lsn.0 < pg.last_acked.load(Ordering::SeqCst);
                            if replayed {
                                debug!(%final_lsn, "skipping a transaction already delivered");
                            }
                        }
                        Some(Event::Change(_)) if replayed => {}
                        Some(Event::Change(change)) => {
                            pending.push(change);
                            if pending.len() >= CHUNK {
                                dispatch::deliver(pg, &pending, commit_us).await;
                                pending.clear();
                            }
                        }
                        Some(Event::Commit { end_lsn, .. }) => {
                            if !pending.is_empty() {
                                dispatch::deliver(pg, &pending, commit_us).await;
                                pending.clear();
                            }
                            in_transaction = false;
                            replayed = false;
                            pg.last_acked.fetch_max(end_lsn.0, Ordering::SeqCst);
                            stream.set_flushed(end_lsn);
                            stream.send_status().await?;
                        }
                        Some(Event::Truncate { .. }) => debug!("TRUNCATE is not delivered (as in Supabase)"),
                        None => {}
                    }
                }
                ReplicationMessage::Keepalive { wal_end, .. } => {
                    // Nothing of ours is in flight: everything up to the server's end of
                    // WAL is handled, so let it release that WAL.
                    if !in_transaction && pending.is_empty() {
                        stream.set_flushed(wal_end);
                    }
                }
            },
            _ = status.tick() => stream.send_status().await?,
        }
    }
}
