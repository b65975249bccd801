//! Logical replication for realtime-rs: a streaming-replication client and a pgoutput
//! decoder. No HTTP, no WebSocket, no Phoenix JSON.
//!
//! * [`stream`]: the replication connection (startup with `replication=database`, auth,
//!   slot creation, `START_REPLICATION`, CopyBoth framing, keepalives, standby status).
//!   It hands out raw XLogData and does not know what pgoutput is.
//! * [`pgoutput`]: a pure decoder from bytes to [`pgoutput::LogicalMessage`].
//! * [`relations`]: the relation cache by OID, fed by Relation messages.
//! * [`value`]: a text cell → the JSON Supabase's `to_jsonb` produces, by type OID.
//! * [`change`]: what consumers see: committed row changes with their transaction bounds.
//! * [`change_stream`]: the session consumers read: [`stream`] with its pgoutput decoded and
//!   assembled into [`change`] events, table shapes and keepalives.
//! * [`lsn`]: the LSN newtype. [`error`]: `WalError`, transient (reconnect) or definite.

pub mod change;
pub mod change_stream;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod relations;
pub mod stream;
pub mod value;

pub use error::WalError;
pub use lsn::Lsn;
