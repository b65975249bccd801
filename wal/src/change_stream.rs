//! The replication stream as its consumers want it: transaction bounds, row changes with
//! their table's shape, table shapes when they change, and the server's keepalives. Bytes
//! are decoded ([`crate::pgoutput`]) and assembled ([`crate::change::Assembler`]) here, so
//! a consumer never handles pgoutput and the transport ([`crate::stream`]) never learns
//! what pgoutput is.

use std::sync::Arc;

use crate::change::{Assembler, Event, Relation};
use crate::lsn::Lsn;
use crate::pgoutput::{self, LogicalMessage};
use crate::stream::{ReplicationMessage, ReplicationOptions, ReplicationStream};
use crate::WalError;

/// One step of a [`ChangeStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A transaction event: Begin, one row change, Commit or Truncate.
    Event(Event),
    /// A table's shape, sent before its first change in a session and after it changed
    /// (already in the relation cache: later changes carry it).
    Relation(Arc<Relation>),
    /// A server keepalive: the server's end of WAL. Everything that committed before it
    /// and is published has been streamed.
    Keepalive {
        /// The server's end of WAL.
        wal_end: Lsn,
    },
}

/// A replication session whose pgoutput is decoded and assembled.
#[derive(Debug)]
pub struct ChangeStream {
    stream: ReplicationStream,
    assembler: Assembler,
    /// Newest server end of WAL seen in an XLogData or keepalive.
    wal_end: Lsn,
}

impl ChangeStream {
    /// Connects and starts streaming (see [`ReplicationStream::connect`]).
    pub async fn connect(config: &tokio_postgres::Config, opts: &ReplicationOptions) -> Result<Self, WalError> {
        Ok(ChangeStream {
            stream: ReplicationStream::connect(config, opts).await?,
            assembler: Assembler::new(),
            wal_end: Lsn(0),
        })
    }

    /// The next step. Origin, Type and logical-decoding messages are absorbed (Type
    /// messages feed the relation cache).
    ///
    /// Cancel safe: [`ReplicationStream::recv`] is, and a message it returned is decoded
    /// and handled before the next await.
    ///
    /// Errors: those of [`ReplicationStream::recv`]; bytes pgoutput cannot decode and a
    /// change naming a relation never described are [`WalError::Decode`]. After any
    /// error the session is over.
    pub async fn recv(&mut self) -> Result<Received, WalError> {
        loop {
            match self.stream.recv().await? {
                ReplicationMessage::XLogData { data, end, .. } => {
                    self.wal_end = self.wal_end.max(end);
                    let message = pgoutput::decode_bytes(&data)?;
                    let relation = match &message {
                        LogicalMessage::Relation(r) => Some(r.id),
                        _ => None,
                    };
                    if let Some(event) = self.assembler.push(message)? {
                        return Ok(Received::Event(event));
                    }
                    if let Some(relation) = relation.and_then(|id| self.assembler.relations().get(id)) {
                        return Ok(Received::Relation(relation.clone()));
                    }
                }
                ReplicationMessage::Keepalive { wal_end, .. } => {
                    self.wal_end = self.wal_end.max(wal_end);
                    return Ok(Received::Keepalive { wal_end });
                }
            }
        }
    }

    /// The newest server end of WAL seen (0/0 before any).
    pub fn server_wal_end(&self) -> Lsn {
        self.wal_end
    }

    /// See [`ReplicationStream::set_flushed`]: pass a Commit's `end_lsn` once the
    /// transaction is handled, or a keepalive's `wal_end` when nothing is in flight.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        self.stream.set_flushed(lsn);
    }

    /// The position status updates report.
    pub fn flushed(&self) -> Lsn {
        self.stream.flushed()
    }

    /// See [`ReplicationStream::send_status`].
    pub async fn send_status(&mut self) -> Result<(), WalError> {
        self.stream.send_status().await
    }

    /// See [`ReplicationStream::close`].
    pub async fn close(self) -> Result<(), WalError> {
        self.stream.close().await
    }
}
