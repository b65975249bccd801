//! A pure decoder for pgoutput protocol version 1 (PostgreSQL 10+; layouts checked byte for
//! byte against PostgreSQL 15, see `wal-rls.md` §3.4/§4.2).
//!
//! One XLogData payload holds exactly one pgoutput message; [`decode`] turns it into a
//! [`LogicalMessage`] or a [`WalError::Decode`]. Every length and count comes from the wire, so
//! each one is checked against the bytes that are actually left before anything is allocated:
//! a hostile or corrupt message costs at most a few allocations proportional to its own size.
//! Trailing bytes and unknown tags are errors, not skipped: a decoder that silently ignores
//! what it does not understand would drop changes (for instance if the walsender were started
//! with protocol 2 + streaming by mistake, whose messages carry an extra xid).
//!
//! Copies: [`decode_bytes`] takes a [`Bytes`] and hands out cell values as zero-copy slices of
//! it (a reference-count increment each). [`decode`] takes a plain slice, copies the message
//! once into a `Bytes` and then does the same. Names (schema, table, column, type, origin,
//! message prefix) are decoded into `String`s; they are tiny and only arrive in rare messages.
//!
//! Not supported (rejected as unknown tags): the streaming messages of protocol 2 (`S`, `E`,
//! `c`, `A`) and the two-phase messages of protocol 3 (`b`, `P`, `K`, `r`, `p`).

use bytes::{BufMut, Bytes};

use crate::lsn::Lsn;
use crate::WalError;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Converts a Postgres timestamp (µs since 2000-01-01 UTC, as in Begin/Commit) to µs since
/// the Unix epoch. Saturates instead of overflowing: the input comes from the wire.
pub fn pg_to_unix_micros(pg_us: i64) -> i64 {
    pg_us.saturating_add(PG_EPOCH_OFFSET_US)
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: a transaction starts. Only transactions that touch a published table are sent.
    Begin {
        /// LSN of the commit record (the transaction's final LSN).
        final_lsn: Lsn,
        /// Commit time, µs since 2000-01-01 UTC (see [`pg_to_unix_micros`]).
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: the transaction committed.
    Commit {
        /// Unused by Postgres so far (always 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record: the position to acknowledge once handled.
        end_lsn: Lsn,
        /// Commit time, µs since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// `O`: the transaction was replicated from another node (`origin` replication setups).
    Origin {
        /// Commit LSN on the origin server.
        commit_lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// `R`: a table's shape. Sent before its first change in a session and again after any
    /// change that may alter it (ALTER TABLE, TRUNCATE, …), so always replace cached copies.
    Relation(Relation),
    /// `Y`: a non-built-in type used by a following Relation (enums, domains, composites…).
    Type {
        /// The type's OID (the `type_oid` of the columns that use it).
        id: u32,
        /// Schema name ("" means `pg_catalog`).
        namespace: String,
        /// `pg_type.typname`.
        name: String,
    },
    /// `I`: a row was inserted.
    Insert {
        /// The relation's OID (see the preceding Relation message).
        relation_id: u32,
        /// The new row.
        new: TupleData,
    },
    /// `U`: a row was updated.
    Update {
        /// The relation's OID.
        relation_id: u32,
        /// The old key (`K`, when a replica-identity column changed) or the whole old row
        /// (`O`, REPLICA IDENTITY FULL); absent when the key did not change.
        old: Option<OldTuple>,
        /// The new row; unchanged TOASTed values are [`Cell::Unchanged`].
        new: TupleData,
    },
    /// `D`: a row was deleted.
    Delete {
        /// The relation's OID.
        relation_id: u32,
        /// The key (`K`) or, with REPLICA IDENTITY FULL, the whole row (`O`).
        old: OldTuple,
    },
    /// `T`: tables were truncated.
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        /// The truncated relations' OIDs.
        relation_ids: Vec<u32>,
    },
    /// `M`: `pg_logical_emit_message` output (only with the `messages` option).
    Message {
        /// Emitted inside a transaction (it then arrives between Begin and Commit); a
        /// non-transactional message arrives on its own.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// The prefix given to `pg_logical_emit_message`.
        prefix: String,
        /// The content (arbitrary bytes).
        content: Bytes,
    },
}

/// A table's shape, as pgoutput describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// `pg_class.oid`: what Insert/Update/Delete refer to.
    pub id: u32,
    /// Schema name ("" means `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY` setting: decides what the old tuples of Update/Delete contain.
    pub replica_identity: ReplicaIdentity,
    /// The published columns in attribute order (dropped and generated columns are not sent),
    /// which is also the order of the cells of every tuple of this relation.
    pub columns: Vec<Column>,
}

/// `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing (UPDATE/DELETE fail if the publication publishes them).
    Nothing,
    /// `f`: the whole row (every column is then flagged as key).
    Full,
    /// `i`: a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity. With REPLICA IDENTITY FULL every column is flagged, so
    /// this is not the primary key: read that from the catalog.
    pub flags_key: bool,
    /// Column name.
    pub name: String,
    /// `pg_attribute.atttypid`.
    pub type_oid: u32,
    /// `pg_attribute.atttypmod` (-1 when there is none).
    pub type_modifier: i32,
}

/// The cells of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<Cell>);

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// `n`: SQL NULL. Also the placeholder for every non-key column of a `K` old tuple.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent (UPDATE new tuples and old tuples).
    Unchanged,
    /// `t`: the type's text output (not NUL-terminated, not validated as UTF-8 here).
    Text(Bytes),
    /// `b`: the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica-identity columns; the other cells are [`Cell::Null`] placeholders.
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The cells, whichever kind this is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Decodes one pgoutput message from a slice (copies it once into a `Bytes`; see
/// [`decode_bytes`] to avoid that copy).
pub fn decode(bytes: &[u8]) -> Result<LogicalMessage, WalError> {
    decode_bytes(&Bytes::copy_from_slice(bytes))
}

/// Decodes one pgoutput message; cell values and `Message` content are slices of `bytes`
/// (no copy).
pub fn decode_bytes(bytes: &Bytes) -> Result<LogicalMessage, WalError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let tag = r.u8("message tag")?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: Lsn(r.u64("Begin final_lsn")?),
            commit_time: r.i64("Begin commit timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: Lsn(r.u64("Commit commit_lsn")?),
            end_lsn: Lsn(r.u64("Commit end_lsn")?),
            commit_time: r.i64("Commit commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: Lsn(r.u64("Origin commit_lsn")?),
            name: r.string("Origin name")?,
        },
        b'R' => LogicalMessage::Relation(relation(&mut r)?),
        b'Y' => LogicalMessage::Type {
            id: r.u32("Type oid")?,
            namespace: r.string("Type namespace")?,
            name: r.string("Type name")?,
        },
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            match r.u8("Insert tuple kind")? {
                b'N' => {}
                k => return Err(err(format!("Insert: expected tuple kind 'N', got {}", show(k)))),
            }
            LogicalMessage::Insert {
                relation_id,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let relation_id = r.u32("Update relation id")?;
            let (old, new) = match r.u8("Update tuple kind")? {
                b'N' => (None, tuple(&mut r)?),
                k @ (b'K' | b'O') => {
                    let old_tuple = tuple(&mut r)?;
                    let old = if k == b'K' {
                        OldTuple::Key(old_tuple)
                    } else {
                        OldTuple::Full(old_tuple)
                    };
                    match r.u8("Update new tuple kind")? {
                        b'N' => {}
                        k => {
                            return Err(err(format!(
                                "Update: expected tuple kind 'N' after the old tuple, got {}",
                                show(k)
                            )))
                        }
                    }
                    (Some(old), tuple(&mut r)?)
                }
                k => {
                    return Err(err(format!(
                        "Update: expected tuple kind 'K', 'O' or 'N', got {}",
                        show(k)
                    )))
                }
            };
            LogicalMessage::Update { relation_id, old, new }
        }
        b'D' => {
            let relation_id = r.u32("Delete relation id")?;
            let old = match r.u8("Delete tuple kind")? {
                b'K' => OldTuple::Key(tuple(&mut r)?),
                b'O' => OldTuple::Full(tuple(&mut r)?),
                k => return Err(err(format!("Delete: expected tuple kind 'K' or 'O', got {}", show(k)))),
            };
            LogicalMessage::Delete { relation_id, old }
        }
        b'T' => {
            let n = r.i32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            // Each relation id is 4 bytes: the count must fit in what is left.
            let n = usize::try_from(n).map_err(|_| err(format!("Truncate: negative relation count {n}")))?;
            if n > r.remaining() / 4 {
                return Err(err(format!(
                    "Truncate: {n} relations declared, {} bytes left",
                    r.remaining()
                )));
            }
            let mut relation_ids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_ids.push(r.u32("Truncate relation id")?);
            }
            LogicalMessage::Truncate { options, relation_ids }
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = Lsn(r.u64("Message lsn")?);
            let prefix = r.string("Message prefix")?;
            let len = r.i32("Message length")?;
            let content = r.bytes(len, "Message content")?;
            LogicalMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        t => return Err(err(format!("unknown pgoutput message tag {}", show(t)))),
    };
    if r.remaining() != 0 {
        return Err(err(format!(
            "{} trailing bytes after a {} message",
            r.remaining(),
            show(tag)
        )));
    }
    Ok(msg)
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, WalError> {
    let id = r.u32("Relation id")?;
    let namespace = r.string("Relation namespace")?;
    let name = r.string("Relation name")?;
    let replica_identity = match r.u8("Relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        k => return Err(err(format!("Relation: unknown replica identity {}", show(k)))),
    };
    let n = r.i16("Relation column count")?;
    let n = usize::try_from(n).map_err(|_| err(format!("Relation: negative column count {n}")))?;
    // Smallest possible column: flags (1) + empty name (1) + type oid (4) + typmod (4).
    if n > r.remaining() / 10 {
        return Err(err(format!(
            "Relation: {n} columns declared, {} bytes left",
            r.remaining()
        )));
    }
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        // Only bit 1 (part of the key) is defined; other bits are tolerated and ignored.
        let flags = r.u8("Relation column flags")?;
        columns.push(Column {
            flags_key: flags & 1 != 0,
            name: r.string("Relation column name")?,
            type_oid: r.u32("Relation column type oid")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, WalError> {
    let n = r.i16("TupleData column count")?;
    let n = usize::try_from(n).map_err(|_| err(format!("TupleData: negative column count {n}")))?;
    // Every cell takes at least its kind byte.
    if n > r.remaining() {
        return Err(err(format!(
            "TupleData: {n} columns declared, {} bytes left",
            r.remaining()
        )));
    }
    let mut cells = Vec::with_capacity(n);
    for _ in 0..n {
        let cell = match r.u8("TupleData cell kind")? {
            b'n' => Cell::Null,
            b'u' => Cell::Unchanged,
            b't' => {
                let len = r.i32("TupleData text length")?;
                Cell::Text(r.bytes(len, "TupleData text value")?)
            }
            b'b' => {
                let len = r.i32("TupleData binary length")?;
                Cell::Binary(r.bytes(len, "TupleData binary value")?)
            }
            k => return Err(err(format!("TupleData: unknown cell kind {}", show(k)))),
        };
        cells.push(cell);
    }
    Ok(TupleData(cells))
}

fn err(message: String) -> WalError {
    WalError::Decode(message)
}

/// A byte for an error message: the character when printable, else its hex value.
fn show(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// A bounds-checked cursor. Every read names what it reads so that errors say where a
/// message was cut short.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WalError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.short(what, N));
        };
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(a)
    }

    fn short(&self, what: &str, need: usize) -> WalError {
        err(format!(
            "message ends early: {what} needs {need} bytes at offset {}, {} left",
            self.pos,
            self.remaining()
        ))
    }

    fn u8(&mut self, what: &str) -> Result<u8, WalError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn i16(&mut self, what: &str) -> Result<i16, WalError> {
        Ok(i16::from_be_bytes(self.take(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, WalError> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }
    fn i32(&mut self, what: &str) -> Result<i32, WalError> {
        Ok(i32::from_be_bytes(self.take(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, WalError> {
        Ok(u64::from_be_bytes(self.take(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64, WalError> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }

    /// `len` bytes as a zero-copy slice; `len` comes from the wire, so a negative or too large
    /// value is an error, never an allocation.
    fn bytes(&mut self, len: i32, what: &str) -> Result<Bytes, WalError> {
        let len = usize::try_from(len).map_err(|_| err(format!("{what}: negative length {len}")))?;
        if len > self.remaining() {
            return Err(self.short(what, len));
        }
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// A NUL-terminated string. Names are in the server encoding; Supabase databases are
    /// UTF-8, and a stray invalid byte is replaced rather than failing the whole stream (a
    /// decode error here would stop replication for good, since the message is resent).
    fn string(&mut self, what: &str) -> Result<String, WalError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(err(format!(
                "message ends early: {what} at offset {} has no terminating NUL",
                self.pos
            )));
        };
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(s)
    }
}

/// Encodes a message in the pgoutput v1 layout: the inverse of [`decode`], for tests and
/// tools that need to produce a stream (fixtures, fuzzing round trips, fake walsenders).
/// `decode(encode(m)) == m` for every `m` that `decode` returned.
pub fn encode(msg: &LogicalMessage, out: &mut Vec<u8>) {
    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.put_slice(s.as_bytes());
        out.put_u8(0);
    }
    // Lengths are written as the wire's signed integers; values that do not fit are clamped
    // (they cannot come out of `decode`).
    fn len_i32(n: usize) -> i32 {
        i32::try_from(n).unwrap_or(i32::MAX)
    }
    fn tuple(out: &mut Vec<u8>, t: &TupleData) {
        out.put_i16(i16::try_from(t.0.len()).unwrap_or(i16::MAX));
        for c in &t.0 {
            match c {
                Cell::Null => out.put_u8(b'n'),
                Cell::Unchanged => out.put_u8(b'u'),
                Cell::Text(b) | Cell::Binary(b) => {
                    out.put_u8(if matches!(c, Cell::Text(_)) { b't' } else { b'b' });
                    out.put_i32(len_i32(b.len()));
                    out.put_slice(b);
                }
            }
        }
    }
    fn old(out: &mut Vec<u8>, o: &OldTuple) {
        match o {
            OldTuple::Key(t) => {
                out.put_u8(b'K');
                tuple(out, t);
            }
            OldTuple::Full(t) => {
                out.put_u8(b'O');
                tuple(out, t);
            }
        }
    }
    match msg {
        LogicalMessage::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            out.put_u8(b'B');
            out.put_u64(final_lsn.0);
            out.put_i64(*commit_time);
            out.put_u32(*xid);
        }
        LogicalMessage::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.put_u8(b'C');
            out.put_u8(*flags);
            out.put_u64(commit_lsn.0);
            out.put_u64(end_lsn.0);
            out.put_i64(*commit_time);
        }
        LogicalMessage::Origin { commit_lsn, name } => {
            out.put_u8(b'O');
            out.put_u64(commit_lsn.0);
            cstr(out, name);
        }
        LogicalMessage::Relation(rel) => {
            out.put_u8(b'R');
            out.put_u32(rel.id);
            cstr(out, &rel.namespace);
            cstr(out, &rel.name);
            out.put_u8(match rel.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            out.put_i16(i16::try_from(rel.columns.len()).unwrap_or(i16::MAX));
            for c in &rel.columns {
                out.put_u8(u8::from(c.flags_key));
                cstr(out, &c.name);
                out.put_u32(c.type_oid);
                out.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type { id, namespace, name } => {
            out.put_u8(b'Y');
            out.put_u32(*id);
            cstr(out, namespace);
            cstr(out, name);
        }
        LogicalMessage::Insert { relation_id, new } => {
            out.put_u8(b'I');
            out.put_u32(*relation_id);
            out.put_u8(b'N');
            tuple(out, new);
        }
        LogicalMessage::Update {
            relation_id,
            old: o,
            new,
        } => {
            out.put_u8(b'U');
            out.put_u32(*relation_id);
            if let Some(o) = o {
                old(out, o);
            }
            out.put_u8(b'N');
            tuple(out, new);
        }
        LogicalMessage::Delete { relation_id, old: o } => {
            out.put_u8(b'D');
            out.put_u32(*relation_id);
            old(out, o);
        }
        LogicalMessage::Truncate { options, relation_ids } => {
            out.put_u8(b'T');
            out.put_i32(len_i32(relation_ids.len()));
            out.put_u8(*options);
            for id in relation_ids {
                out.put_u32(*id);
            }
        }
        LogicalMessage::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            out.put_u8(b'M');
            out.put_u8(u8::from(*transactional));
            out.put_u64(lsn.0);
            cstr(out, prefix);
            out.put_i32(len_i32(content.len()));
            out.put_slice(content);
        }
    }
}

#[cfg(test)]
mod tests;
