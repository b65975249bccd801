//! Private channels: who may read or write a topic is decided by the RLS policies on
//! `realtime.messages`, evaluated as the subscriber (protocol.md §9). Probe rows are used
//! and every transaction is rolled back, so nothing is ever written.
//!
//! * Read: as the server's own role, insert a probe row per extension for the topic; then
//!   switch to the subscriber (role, `realtime.topic`, `request.jwt.claims`,
//!   `request.jwt.claim.sub`, `request.jwt.claim.role`) and see which probes it can SELECT.
//! * Write: as the subscriber, try to INSERT a probe per extension, each in a savepoint.

use tokio_postgres::error::SqlState;
use tracing::{debug, warn};

use crate::auth::Claims;
use crate::postgres_changes::pool::Pool;

/// What a subscriber may read on a private topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Read {
    /// May receive broadcasts (and replay them).
    pub broadcast: bool,
    /// May see presence.
    pub presence: bool,
}

/// What a subscriber may write on a private topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Write {
    /// May broadcast.
    pub broadcast: bool,
    /// May track presence.
    pub presence: bool,
}

const SET_VIEWER: &str = "select set_config('role', $1, true), set_config('realtime.topic', $2, true), \
    set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true), \
    set_config('request.jwt.claim.role', $1, true)";

/// Read permissions of `claims` on `topic` (the sub-topic, without `realtime:`). Presence
/// is only evaluated when the channel enabled it, as in Supabase.
pub async fn read(
    pool: &Pool,
    topic: &str,
    claims: &Claims,
    with_presence: bool,
) -> Result<Read, tokio_postgres::Error> {
    let _timer = crate::observability::metrics::RlsTimer::start(crate::observability::metrics::Rls::ChannelRead, 1);
    let conn = pool.checkout().await?;
    let claims_json: &str = &claims.json;
    let sub = claims.sub.clone().unwrap_or_default();
    let extensions: &[&str] = if with_presence {
        &["broadcast", "presence"]
    } else {
        &["broadcast"]
    };
    conn.batch_execute("begin").await?;
    let result = async {
        let mut ids = Vec::new();
        for ext in extensions {
            let row = conn
                .query_one(
                    "insert into realtime.messages (topic, extension, private, event) values ($1, $2, true, 'realtime-rs:authorization') returning id::text",
                    &[&topic, ext],
                )
                .await?;
            ids.push(row.get::<_, String>(0));
        }
        conn.query(SET_VIEWER, &[&claims.role, &topic, &claims_json, &sub]).await?;
        let rows = conn
            .query("select extension from realtime.messages where id = any($1::text[]::uuid[])", &[&ids])
            .await?;
        let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(Read {
            broadcast: seen.iter().any(|e| e == "broadcast"),
            presence: seen.iter().any(|e| e == "presence"),
        })
    }
    .await;
    if let Err(e) = conn.batch_execute("rollback").await {
        warn!(error = %e, "rollback after a read authorization failed");
    }
    debug!(topic, role = %claims.role, ?result, "read authorization");
    result
}

/// Write permissions of `claims` on `topic`.
pub async fn write(pool: &Pool, topic: &str, claims: &Claims) -> Result<Write, tokio_postgres::Error> {
    let _timer = crate::observability::metrics::RlsTimer::start(crate::observability::metrics::Rls::ChannelWrite, 1);
    let conn = pool.checkout().await?;
    let claims_json: &str = &claims.json;
    let sub = claims.sub.clone().unwrap_or_default();
    conn.batch_execute("begin").await?;
    let result = async {
        conn.query(SET_VIEWER, &[&claims.role, &topic, &claims_json, &sub]).await?;
        let mut allowed = [false, false];
        for (i, ext) in ["broadcast", "presence"].iter().enumerate() {
            conn.batch_execute("savepoint probe").await?;
            let insert = conn
                .execute(
                    "insert into realtime.messages (topic, extension, private, event) values ($1, $2, true, 'realtime-rs:authorization')",
                    &[&topic, ext],
                )
                .await;
            match insert {
                Ok(_) => allowed[i] = true,
                Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {}
                Err(e) => {
                    // A policy that raises denies, and is worth an operator's attention.
                    warn!(error_code = "RlsPolicyError", topic, error = %e, "write policy failed");
                }
            }
            conn.batch_execute("rollback to savepoint probe").await?;
        }
        Ok(Write {
            broadcast: allowed[0],
            presence: allowed[1],
        })
    }
    .await;
    if let Err(e) = conn.batch_execute("rollback").await {
        warn!(error = %e, "rollback after a write authorization failed");
    }
    debug!(topic, role = %claims.role, ?result, "write authorization");
    result
}
