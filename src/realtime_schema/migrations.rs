//! Versioned, idempotent migrations of the `realtime` schema.
//!
//! * A session advisory lock serialises servers starting together against one database.
//! * `realtime.rs_schema_migrations(version, applied_at)` records what was applied; each
//!   pending migration runs in its own transaction together with its version row, so a
//!   crash leaves either all of a migration or none of it.
//! * The SQL itself is also idempotent (`if not exists`, `create or replace`), so a schema
//!   that already has some of these objects (made by hand, or by Supabase) is adopted.
//! * Grants are not versioned: they run on every start, so roles created later get them.

use tokio_postgres::Client;
use tracing::{info, warn};

/// One migration: its version (never reused or renumbered) and SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In order. Append new versions; never edit one that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages table",
        sql: include_str!("sql/0001_messages.sql"),
    },
    Migration {
        version: 2,
        name: "topic, send, send_binary, broadcast_changes",
        sql: include_str!("sql/0002_functions.sql"),
    },
    Migration {
        version: 3,
        name: "messages publication",
        sql: include_str!("sql/0003_publication.sql"),
    },
    Migration {
        version: 4,
        name: "public broadcast history (REPLAY_PUBLIC)",
        sql: include_str!("sql/0004_public_broadcast_history.sql"),
    },
    Migration {
        version: 5,
        name: "persisted client broadcasts (expiry, delivered live)",
        sql: include_str!("sql/0005_persisted_broadcasts.sql"),
    },
];

const GRANTS: &str = include_str!("sql/grants.sql");

/// `pg_advisory_lock` key: "realtime" in ASCII, unlikely to collide with an app's keys.
const LOCK_KEY: i64 = 0x7265_616c_7469_6d65;

const BOOTSTRAP: &str = "create schema if not exists realtime; \
    create table if not exists realtime.rs_schema_migrations (\
      version integer primary key, \
      applied_at timestamptz not null default now())";

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Why migrating failed.
#[derive(Debug)]
pub struct MigrateError {
    /// What failed, with the server's error.
    pub message: String,
    /// Retrying later may succeed (connection lost, server restarting).
    pub transient: bool,
}

impl MigrateError {
    fn new(what: &str, e: &tokio_postgres::Error) -> MigrateError {
        MigrateError {
            message: describe(what, e),
            transient: is_transient(e),
        }
    }
}

/// Applies every pending migration, then the grants. Safe to run concurrently from several
/// servers and any number of times.
pub async fn migrate(client: &Client) -> Result<(), String> {
    migrate_classified(client).await.map_err(|e| e.message)
}

/// [`migrate`], telling transient failures from definite ones.
pub async fn migrate_classified(client: &Client) -> Result<(), MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| MigrateError::new("taking the migration lock", &e))?;
    let result = migrate_locked(client).await;
    // Also released when the connection closes, so a failure here only delays the next
    // server until this connection goes away.
    if let Err(e) = client.execute("select pg_advisory_unlock($1)", &[&LOCK_KEY]).await {
        warn!(error = %e, "cannot release the migration lock");
    }
    result
}

async fn migrate_locked(client: &Client) -> Result<(), MigrateError> {
    client
        .batch_execute(BOOTSTRAP)
        .await
        .map_err(|e| MigrateError::new("creating schema realtime", &e))?;
    let applied: Vec<i32> = client
        .query("select version from realtime.rs_schema_migrations", &[])
        .await
        .map_err(|e| MigrateError::new("reading realtime.rs_schema_migrations", &e))?
        .iter()
        .filter_map(|row| row.try_get::<_, i32>(0).ok())
        .collect();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        apply(client, m).await?;
        info!(version = m.version, name = m.name, "realtime schema migration applied");
    }
    // A failed grant (e.g. the schema belongs to another role) leaves the server usable for
    // everything but those roles' private channels: report it, do not refuse to start.
    if let Err(e) = in_transaction(client, GRANTS).await {
        warn!(error = %describe("granting realtime.messages to anon/authenticated/service_role", &e), "grants not applied");
    }
    Ok(())
}

async fn apply(client: &Client, m: &Migration) -> Result<(), MigrateError> {
    let sql = format!(
        "{}\n;insert into realtime.rs_schema_migrations (version) values ({})",
        m.sql, m.version
    );
    in_transaction(client, &sql)
        .await
        .map_err(|e| MigrateError::new(&format!("migration {} ({})", m.version, m.name), &e))
}

async fn in_transaction(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("begin").await?;
    match client.batch_execute(sql).await {
        Ok(()) => client.batch_execute("commit").await,
        Err(e) => {
            if let Err(rollback) = client.batch_execute("rollback").await {
                warn!(error = %rollback, "rollback after a failed migration step failed");
            }
            Err(e)
        }
    }
}

/// Error text with the server's message (tokio-postgres' Display alone says only "db error").
pub(crate) fn describe(what: &str, e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{what}: ERROR {} {}", db.code().code(), db.message()),
        None => format!("{what}: {e}"),
    }
}

/// True when retrying later may help (connection lost, server starting or shutting down,
/// out of resources), as opposed to a definite error such as missing privileges.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "40001" || c == "40P01"
        }
        // No SQLSTATE: an I/O or protocol failure of the connection itself.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_unique() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(latest_version(), 5);
    }
}
