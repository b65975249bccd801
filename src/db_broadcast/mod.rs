//! Broadcast from Database (protocol.md §10): rows inserted into `realtime.messages` (by
//! `realtime.send`, `realtime.send_binary`, `realtime.broadcast_changes` or by hand) are
//! streamed through logical replication and delivered to `realtime:<topic>`, public or
//! private per the row's `private` flag, as user broadcasts with metadata `{"id": <row id>}`:
//! type 4 to protocol-2.0.0 sockets, JSON with `meta.id` to 1.0.0 sockets, binary rows only
//! to 2.0.0 sockets (the encodings live in `realtime_protocol::BroadcastMessage`).
//!
//! * [`row`]: an inserted row → topic, privacy and message (pure).
//! * [`replication`]: this capability as a sink of the replication driver.
//!
//! Who may read a private topic is decided when a channel joins; this module only picks the
//! private or public fan-out topic.

pub mod replication;
pub mod row;

use std::sync::Arc;

use tracing::info;

use crate::app::App;
use crate::realtime_schema::MESSAGES_PUBLICATION;

/// What the replication task streams.
#[derive(Debug, Clone)]
pub struct Source {
    /// Connection settings (`DATABASE_URL`).
    pub db: tokio_postgres::Config,
    /// Persistent replication slot (`MESSAGES_SLOT_NAME`).
    pub slot: String,
    /// Publication of `realtime.messages`.
    pub publication: String,
}

/// What to stream for Broadcast from Database; `None` without `DATABASE_URL`.
pub fn source(app: &App) -> Result<Option<Source>, String> {
    let Some(url) = app.config.database_url.as_deref() else {
        return Ok(None);
    };
    let db: tokio_postgres::Config = url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
    Ok(Some(Source {
        db,
        slot: app.config.messages_slot_name.clone(),
        publication: MESSAGES_PUBLICATION.to_owned(),
    }))
}

/// Starts streaming `source` into `app`'s publish path.
pub fn spawn(app: Arc<App>, source: Source) -> tokio::task::JoinHandle<()> {
    info!(slot = %source.slot, publication = %source.publication, "Broadcast from Database enabled");
    tokio::spawn(replication::run(app, source))
}
