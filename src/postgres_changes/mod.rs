//! Postgres Changes. Streaming from logical replication arrives with the Postgres
//! Changes work; until then a join with bindings is answered the way Supabase answers
//! when it cannot reach the project database.

use serde_json::{Map, Value};

use crate::app::App;
use realtime_protocol::errors;

/// The `system` message (status ok?, text) for a join's postgres_changes bindings, or
/// `None` when there are none.
pub fn subscribe(app: &App, bindings: &[Map<String, Value>]) -> Option<(bool, &'static str)> {
    if bindings.is_empty() {
        return None;
    }
    if app.config.database_url.is_none() {
        tracing::info!("postgres_changes requested but no DATABASE_URL is configured");
    }
    Some((false, errors::PG_UNABLE_TO_CONNECT))
}
