//! Retention: rows of `realtime.messages` older than the configured age are deleted, and
//! persisted broadcasts whose `ttl` has passed (`rs_expires_at`), whatever the age.
//!
//! Deletes go in small batches, each its own statement, so a large backlog never holds
//! locks or a snapshot for long, and `skip locked` lets several servers share the work.
//! The publication streams inserts only, so deleting never reaches clients.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};
use tracing::{debug, info, warn};

use super::connect;
use super::migrations::describe;

/// Rows per delete statement.
const BATCH: i64 = 1000;
/// Largest retention honoured (200 years).
const MAX_HOURS: u64 = 200 * 366 * 24;
/// Pause between batches, to leave the database room for other work.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

// Rows are UTC wall-clock times (see sql/0001_messages.sql), so the cutoff is too.
const DELETE_BATCH: &str = "delete from realtime.messages where id in (\
      select id from realtime.messages \
      where inserted_at < timezone('utc', now()) - make_interval(hours => $1::int) \
      order by inserted_at limit $2 for update skip locked)";

const DELETE_EXPIRED_BATCH: &str = "delete from realtime.messages where id in (\
      select id from realtime.messages \
      where rs_expires_at < timezone('utc', now()) \
      order by rs_expires_at limit $1 for update skip locked)";

/// Starts the retention task: once right away, then every `every`. With
/// `retention_hours = 0` only expired persisted broadcasts are deleted.
pub fn spawn_retention(db: Config, retention_hours: u64, every: Duration) -> JoinHandle<()> {
    info!(
        retention_hours,
        every_secs = every.as_secs(),
        "message retention enabled"
    );
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match run_once(&db, retention_hours).await {
                Ok(0) => debug!("retention: nothing to delete"),
                Ok(n) => info!(deleted = n, retention_hours, "retention: old messages deleted"),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                    debug!("retention: realtime.messages does not exist (yet)");
                }
                Err(e) => warn!(error = %describe("retention", &e), "retention failed; retrying at the next run"),
            }
        }
    })
}

async fn run_once(db: &Config, retention_hours: u64) -> Result<u64, tokio_postgres::Error> {
    let client = connect(db).await?;
    let old = if retention_hours > 0 {
        delete_old_messages(&client, retention_hours).await?
    } else {
        0
    };
    Ok(old + delete_expired_messages(&client).await?)
}

/// Deletes every persisted broadcast past its `ttl`, batch by batch; returns how many. A
/// schema without migration 5 has nothing that expires.
pub async fn delete_expired_messages(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let mut total = 0;
    loop {
        let n = match client.execute(DELETE_EXPIRED_BATCH, &[&BATCH]).await {
            Ok(n) => n,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_COLUMN) => {
                debug!("retention: realtime.messages has no rs_expires_at (migration 5 not applied)");
                return Ok(total);
            }
            Err(e) => return Err(e),
        };
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

/// Deletes every message older than `retention_hours`, batch by batch; returns how many.
pub async fn delete_old_messages(client: &Client, retention_hours: u64) -> Result<u64, tokio_postgres::Error> {
    // Capped at 200 years so the cutoff stays a valid timestamp.
    let hours = i32::try_from(retention_hours.min(MAX_HOURS)).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let n = client.execute(DELETE_BATCH, &[&hours, &BATCH]).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}
