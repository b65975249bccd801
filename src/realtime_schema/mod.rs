//! The `realtime` schema Supabase apps rely on (protocol.md §9, §10): `realtime.messages`,
//! `realtime.topic()`, `realtime.send`, `realtime.send_binary`, `realtime.broadcast_changes`
//! and the `supabase_realtime_messages_publication` that Broadcast from Database streams.
//!
//! * [`migrations`]: versioned, idempotent migrations applied at start.
//! * [`retention`]: the task that deletes old messages.

pub mod migrations;
pub mod retention;

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, error, info, warn};

pub use migrations::{latest_version, migrate};
pub use retention::{delete_expired_messages, delete_old_messages, spawn_retention};

/// The publication created for `realtime.messages` (inserts only).
pub const MESSAGES_PUBLICATION: &str = "supabase_realtime_messages_publication";

/// Bounds the first connection attempt so an unreachable database does not hold up the
/// start (the attempt then continues in the background).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the schema service.
pub struct Settings<'a> {
    /// `DATABASE_URL`.
    pub database_url: &'a str,
    /// `REALTIME_MIGRATIONS`: apply migrations at start.
    pub migrations: bool,
    /// `MESSAGES_RETENTION_HOURS`: messages older than this are deleted; 0 keeps them
    /// (expired persisted broadcasts are deleted either way).
    pub retention_hours: u64,
    /// `MESSAGES_RETENTION_INTERVAL_SECS`: how often retention runs.
    pub retention_interval: Duration,
}

/// Applies the migrations (when enabled) and starts the retention task.
///
/// The server starts with the schema in place when the database is reachable. When it is
/// not (or the failure is transient), migrating continues in the background and the rest
/// of the server starts anyway (Broadcast from Database waits for the publication). A
/// definite failure (e.g. no privilege to create the schema) stops the start: the operator
/// must fix it or set `REALTIME_MIGRATIONS=false` and manage the schema themselves.
pub async fn start(settings: Settings<'_>) -> Result<(), String> {
    let config: Config = settings
        .database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    if settings.migrations {
        match migrate_once(&config).await {
            Ok(()) => {}
            Err(e) if e.transient => {
                warn!(error = %e.message, "realtime schema migrations postponed; retrying in the background");
                tokio::spawn(migrate_until_done(config.clone()));
            }
            Err(e) => {
                return Err(format!(
                    "realtime schema migrations failed: {} (set REALTIME_MIGRATIONS=false to manage the realtime schema yourself)",
                    e.message
                ))
            }
        }
    } else {
        info!("REALTIME_MIGRATIONS=false: the realtime schema is not managed by this server");
    }
    // Also with retention 0 (keep everything): persisted broadcasts still expire.
    spawn_retention(config, settings.retention_hours, settings.retention_interval);
    Ok(())
}

async fn migrate_once(config: &Config) -> Result<(), migrations::MigrateError> {
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect(config)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return Err(migrations::MigrateError {
                message: migrations::describe("connecting to the database", &e),
                transient: true,
            })
        }
        Err(_) => {
            return Err(migrations::MigrateError {
                message: format!("connecting to the database: no answer within {CONNECT_TIMEOUT:?}"),
                transient: true,
            })
        }
    };
    migrations::migrate_classified(&client).await?;
    info!(version = latest_version(), "realtime schema up to date");
    Ok(())
}

async fn migrate_until_done(config: Config) {
    let mut delay = Duration::from_secs(1);
    loop {
        tokio::time::sleep(delay).await;
        match migrate_once(&config).await {
            Ok(()) => return,
            Err(e) if e.transient => {
                debug!(error = %e.message, "realtime schema migrations still postponed");
            }
            Err(e) => {
                // Nothing to retry: the server keeps serving Broadcast and Presence.
                error!(error = %e.message, "realtime schema migrations failed; set REALTIME_MIGRATIONS=false to manage the schema yourself");
                return;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Opens a plain SQL connection (same TLS support as the rest of the server: none).
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}
