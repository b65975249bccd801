//! Which node streams the replication slots: the one holding a PostgreSQL advisory lock on
//! a session of its own (the lease). The lock ends with that session, so a node that dies
//! or is cut off from the database loses it by itself, unlike a lock in the engine that
//! could expire while its holder still streams; and Postgres lets one session at a time
//! stream a slot, which fences a stale leader a second time. The others retry every
//! [`RETRY`]; when the leader is gone one of them takes the lease and resumes from the
//! slots' confirmed positions (receivers drop what they already delivered).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::ClusterBroker;

/// How often a node without the lease tries to take it.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often the leader checks that its lease session is alive (and how long it waits).
const CHECK: Duration = Duration::from_secs(1);

/// Starts the streams this node runs while it leads.
pub type StartStreams = Box<dyn Fn() -> Vec<JoinHandle<()>> + Send + Sync>;

/// The advisory lock key for a slot: a stable 64-bit FNV-1a hash of its name (the same on
/// every node and every build).
pub fn lock_key(slot: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"realtime-rs replication lease:".iter().chain(slot.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Competes for the lease until shutdown; runs `start` while this node holds it.
pub fn spawn(
    db: tokio_postgres::Config,
    key: i64,
    start: StartStreams,
    broker: Arc<ClusterBroker>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(db, key, start, broker, shutdown))
}

async fn run(
    db: tokio_postgres::Config,
    key: i64,
    start: StartStreams,
    broker: Arc<ClusterBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match take_lease(&db, key).await {
            Ok(Some(session)) => {
                info!(node_id = %broker.node_id(), "this node leads replication: streaming the slots");
                broker.set_leader(true);
                let streams = start();
                let lost = keep(&session, &mut shutdown).await;
                match lost {
                    None => return,
                    Some(why) => {
                        warn!(reason = %why, "replication lease lost: this node stops streaming");
                        for stream in &streams {
                            stream.abort();
                        }
                        broker.set_leader(false);
                    }
                }
            }
            Ok(None) => debug!("another node leads replication"),
            Err(e) => debug!(error = %e, "cannot reach the database for the replication lease; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The session holding the lease, or `None` when another node holds it.
async fn take_lease(
    db: &tokio_postgres::Config,
    key: i64,
) -> Result<Option<tokio_postgres::Client>, tokio_postgres::Error> {
    let session = crate::realtime_schema::connect(db).await?;
    let row = session.query_one("select pg_try_advisory_lock($1)", &[&key]).await?;
    Ok(row.try_get::<_, bool>(0)?.then_some(session))
}

/// Holds the lease until its session fails (the reason) or the server stops (`None`).
async fn keep(session: &tokio_postgres::Client, shutdown: &mut watch::Receiver<bool>) -> Option<String> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK) => {}
            _ = shutdown.changed() => return None,
        }
        match tokio::time::timeout(CHECK * 3, session.simple_query("select 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(e.to_string()),
            Err(_) => return Some("the lease session did not answer in 3 s".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_key_is_stable_and_per_slot() {
        assert_eq!(super::lock_key("realtime_rs"), super::lock_key("realtime_rs"));
        assert_ne!(super::lock_key("realtime_rs"), super::lock_key("realtime_rs_messages"));
    }
}
