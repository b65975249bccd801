//! The Broadcast-from-Database stream: same acknowledgement rules as Postgres Changes
//! (`postgres_changes/replication.rs`).
//!
//! * The slot is persistent: a message inserted while this server is down is delivered when
//!   it is back.
//! * A transaction's `end_lsn` is acknowledged only after its messages were queued to the
//!   subscribers (fan-out never waits, so each is delivered as it is decoded; pgoutput
//!   without streaming only sends committed transactions).
//! * Keepalives advance the slot to `wal_end` when no transaction is in flight.
//! * PostgreSQL 15 can send acknowledged transactions again after it restarts; those that
//!   end before the last acknowledged position are skipped. A transaction interrupted by a
//!   lost connection is resent whole; the messages of it already delivered are skipped.
//!
//! The slot is created only once the publication exists: a slot created first would decode
//! WAL written before the publication, and pgoutput fails on it ("publication does not
//! exist").

use std::sync::Arc;
use std::time::Duration;

use realtime_wal::change::{Assembler, ChangeKind, Event, RowChange};
use realtime_wal::pgoutput;
use realtime_wal::stream::{ReplicationMessage, ReplicationOptions, ReplicationStream};
use realtime_wal::{Lsn, WalError};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::row::{self, Skip};
use super::Source;
use crate::app::App;
use crate::fanout::TopicKey;
use crate::observability::state::{StreamState, DB_BROADCAST as STATS};
use crate::realtime_schema;

/// How often the position is reported while idle.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// After a commit, the acknowledgement is sent within this delay; commits in between share
/// one status update, so a burst of small transactions does not cost one write each.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Progress that outlives a replication session.
#[derive(Debug, Default)]
struct Progress {
    /// End LSN of the last transaction delivered and acknowledged by this process.
    last_acked: u64,
    /// The transaction being delivered when the last session ended, and how many of its
    /// changes were handled: when it is streamed again, those are skipped.
    partial: Option<(Lsn, usize)>,
}

/// The transaction being received.
struct Tx {
    final_lsn: Lsn,
    /// Already delivered and acknowledged (resent after a Postgres restart).
    replayed: bool,
    /// Changes of this transaction seen so far.
    seen: usize,
    /// Changes at the start of this transaction delivered by an earlier session.
    skip: usize,
}

/// Runs forever: waits for the publication, then one replication session after another.
pub async fn run(app: Arc<App>, source: Source) {
    // The slot first (so nothing is missed), then let clients of a previous run rejoin
    // before the backlog is delivered.
    if let Err(e) = crate::postgres_changes::pool::ensure_slot(&source.db, &source.slot, &source.publication).await {
        warn!(error = %e, "cannot check the messages slot now; streaming will create it");
    }
    tokio::time::sleep(Duration::from_millis(app.config.replication_start_delay_ms)).await;
    let mut progress = Progress::default();
    let mut backoff = Duration::from_millis(250);
    let mut told_missing = false;
    loop {
        let ready = publication_ready(&source).await;
        if let Ok(false) = ready {
            STATS.set(StreamState::WaitingForPublication);
        }
        match ready {
            Ok(true) => {
                let mut streamed = false;
                let result = session(&app, &source, &mut progress, &mut streamed).await;
                STATS.set(StreamState::Down);
                match result {
                    Ok(()) => info!("messages replication session ended"),
                    Err(e) => {
                        warn!(error = %e, transient = e.is_transient(), "messages replication stopped; reconnecting")
                    }
                }
                if streamed {
                    backoff = Duration::from_millis(250);
                }
            }
            Ok(false) if !told_missing => {
                told_missing = true;
                warn!(
                    publication = %source.publication,
                    "Broadcast from Database waits for the publication of realtime.messages (created by the realtime schema migrations)"
                );
            }
            Ok(false) => debug!(publication = %source.publication, "publication still missing"),
            Err(e) => {
                warn!(error = %realtime_schema::migrations::describe("checking the messages publication", &e), "cannot check the messages publication; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// True when the publication exists and includes `realtime.messages`.
async fn publication_ready(source: &Source) -> Result<bool, tokio_postgres::Error> {
    let client = realtime_schema::connect(&source.db).await?;
    let row = client
        .query_one(
            "select exists (select 1 from pg_publication_tables \
             where pubname = $1 and schemaname = 'realtime' and tablename = 'messages')",
            &[&source.publication],
        )
        .await?;
    row.try_get(0)
}

async fn session(
    app: &Arc<App>,
    source: &Source,
    progress: &mut Progress,
    streamed: &mut bool,
) -> Result<(), WalError> {
    let opts = ReplicationOptions {
        slot: source.slot.clone(),
        publication: source.publication.clone(),
        temporary_slot: false,
        application_name: "realtime-rs-messages".into(),
    };
    let mut stream = ReplicationStream::connect(&source.db, &opts).await?;
    *streamed = true;
    STATS.set(StreamState::Streaming);
    info!(slot = %source.slot, publication = %source.publication, "messages replication streaming");

    let mut assembler = Assembler::new();
    let mut tx: Option<Tx> = None;
    // When set, a status update is due at that instant (see ACK_DELAY).
    let mut ack_due: Option<Instant> = None;
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.tick().await;
    let mut shutdown = app.shutdown.clone();
    loop {
        let ack_at = ack_due.unwrap_or_else(|| Instant::now() + STATUS_EVERY);
        tokio::select! {
            // Acknowledge what was delivered before the process exits, so a restart does
            // not deliver it again.
            _ = shutdown.changed() => {
                stream.send_status().await?;
                info!("messages replication: last delivered position acknowledged for shutdown");
                std::future::pending::<()>().await;
            }
            msg = stream.recv() => match msg? {
                ReplicationMessage::XLogData { data, end, .. } => {
                    STATS.server_wal_end(end.0);
                    match assembler.push(pgoutput::decode_bytes(&data)?)? {
                        Some(Event::Begin { final_lsn, .. }) => {
                            let replayed = final_lsn.0 < progress.last_acked;
                            if replayed {
                                debug!(%final_lsn, "skipping a transaction already delivered");
                            }
                            let skip = match progress.partial {
                                Some((lsn, n)) if lsn == final_lsn => n,
                                _ => 0,
                            };
                            tx = Some(Tx { final_lsn, replayed, seen: 0, skip });
                        }
                        Some(Event::Change(change)) => match tx.as_mut() {
                            Some(t) => {
                                t.seen += 1;
                                if !t.replayed && t.seen > t.skip {
                                    deliver(app, &change);
                                    progress.partial = Some((t.final_lsn, t.seen));
                                }
                            }
                            // pgoutput always sends Begin first; deliver rather than lose it.
                            None => deliver(app, &change),
                        },
                        Some(Event::Commit { end_lsn, commit_time_us, .. }) => {
                            STATS.delivered(end_lsn.0, commit_time_us);
                            tx = None;
                            progress.partial = None;
                            progress.last_acked = progress.last_acked.max(end_lsn.0);
                            stream.set_flushed(end_lsn);
                            ack_due.get_or_insert_with(|| Instant::now() + ACK_DELAY);
                        }
                        Some(Event::Truncate { .. }) | None => {}
                    }
                }
                ReplicationMessage::Keepalive { wal_end, .. } => {
                    // Nothing in flight: everything up to the server's end of WAL is handled.
                    if tx.is_none() {
                        stream.set_flushed(wal_end);
                        STATS.caught_up(wal_end.0);
                    } else {
                        STATS.server_wal_end(wal_end.0);
                    }
                }
            },
            _ = tokio::time::sleep_until(ack_at), if ack_due.is_some() => {
                ack_due = None;
                stream.send_status().await?;
            }
            _ = status.tick() => stream.send_status().await?,
        }
    }
}

/// Fans one inserted row out (never waits: full outboxes disconnect their own clients).
fn deliver(app: &App, change: &RowChange) {
    let relation = &change.relation;
    if change.kind != ChangeKind::Insert || relation.namespace != "realtime" || relation.name != "messages" {
        // The publication is ours (inserts of realtime.messages), but an operator may have
        // added tables or actions to it.
        trace!(table = %relation.name, "not a realtime.messages insert; ignored");
        return;
    }
    let Some(new) = change.new.as_ref() else {
        return;
    };
    let msg = match row::decode(relation, new) {
        Ok(m) => m,
        Err(Skip::NotBroadcast) => return,
        Err(Skip::Invalid(why)) => {
            warn!(reason = %why, "realtime.messages row not delivered");
            return;
        }
    };
    let limit = app.config.max_payload_bytes();
    if msg.message.payload_len() > limit {
        warn!(id = %msg.id, topic = %msg.topic, size = msg.message.payload_len(), limit, reason = "payload_size", "database broadcast over MAX_PAYLOAD_SIZE_KB not delivered");
        crate::observability::limit_rejected("db_payload_size");
        return;
    }
    let key = TopicKey::new(&format!("realtime:{}", msg.topic), msg.private);
    let n = app.registry.broadcast_stored(&key, &msg.message, &msg.id);
    app.limits.events.add(1 + n as u64);
    trace!(id = %msg.id, topic = %msg.topic, private = msg.private, subscribers = n, "database broadcast delivered");
}
