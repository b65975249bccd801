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
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn text(s: &str) -> Cell {
        Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn is_decode_err<T: std::fmt::Debug>(r: Result<T, WalError>) -> String {
        match r {
            Err(WalError::Decode(m)) => m,
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    /// One message of every tag and shape, for the generic checks below.
    fn samples() -> Vec<LogicalMessage> {
        let rel = Relation {
            id: 16384,
            namespace: "public".into(),
            name: "notes".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    flags_key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    flags_key: false,
                    name: "body".into(),
                    type_oid: 1043,
                    type_modifier: 259,
                },
            ],
        };
        let row = TupleData(vec![
            text("1"),
            Cell::Null,
            Cell::Unchanged,
            Cell::Binary(Bytes::from_static(&[0, 1])),
        ]);
        vec![
            LogicalMessage::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 815_000_000_123_456,
                xid: 734,
            },
            LogicalMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: 815_000_000_123_456,
            },
            LogicalMessage::Origin {
                commit_lsn: Lsn(7),
                name: "node_a".into(),
            },
            LogicalMessage::Relation(rel.clone()),
            LogicalMessage::Relation(Relation {
                namespace: String::new(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![],
                ..rel.clone()
            }),
            LogicalMessage::Relation(Relation {
                replica_identity: ReplicaIdentity::Nothing,
                ..rel.clone()
            }),
            LogicalMessage::Relation(Relation {
                replica_identity: ReplicaIdentity::Index,
                ..rel
            }),
            LogicalMessage::Type {
                id: 16390,
                namespace: "public".into(),
                name: "mood".into(),
            },
            LogicalMessage::Insert {
                relation_id: 16384,
                new: row.clone(),
            },
            LogicalMessage::Insert {
                relation_id: 1,
                new: TupleData(vec![]),
            },
            LogicalMessage::Update {
                relation_id: 16384,
                old: None,
                new: row.clone(),
            },
            LogicalMessage::Update {
                relation_id: 16384,
                old: Some(OldTuple::Key(TupleData(vec![text("1"), Cell::Null]))),
                new: row.clone(),
            },
            LogicalMessage::Update {
                relation_id: 16384,
                old: Some(OldTuple::Full(row.clone())),
                new: row.clone(),
            },
            LogicalMessage::Delete {
                relation_id: 16384,
                old: OldTuple::Key(TupleData(vec![text("1"), Cell::Null])),
            },
            LogicalMessage::Delete {
                relation_id: 16384,
                old: OldTuple::Full(row),
            },
            LogicalMessage::Truncate {
                options: 3,
                relation_ids: vec![16384, 16390],
            },
            LogicalMessage::Truncate {
                options: 0,
                relation_ids: vec![],
            },
            LogicalMessage::Message {
                transactional: true,
                lsn: Lsn(99),
                prefix: "app".into(),
                content: Bytes::from_static(b"hello\0world"),
            },
            LogicalMessage::Message {
                transactional: false,
                lsn: Lsn(100),
                prefix: String::new(),
                content: Bytes::new(),
            },
        ]
    }

    fn encoded(m: &LogicalMessage) -> Vec<u8> {
        let mut v = Vec::new();
        encode(m, &mut v);
        v
    }

    #[test]
    fn verified_insert_example_from_pg15() {
        // `insert into notes values (3, null, null, null)`, relid 16384 (wal-rls.md §3.4).
        let b = hex("49 00004000 4E 0004 74 00000001 33 6E 6E 6E");
        assert_eq!(b.len(), 17);
        let m = decode(&b).unwrap();
        assert_eq!(
            m,
            LogicalMessage::Insert {
                relation_id: 16384,
                new: TupleData(vec![text("3"), Cell::Null, Cell::Null, Cell::Null]),
            }
        );
        assert_eq!(encoded(&m), b);
    }

    #[test]
    fn begin_and_commit_have_their_verified_sizes() {
        // B is 21 bytes and C 26 bytes in total (verified on PG15).
        let b = hex("42 00000016B374D848 0002E53C3A8F1E40 000002DE");
        assert_eq!(b.len(), 21);
        match decode(&b).unwrap() {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                assert_eq!(final_lsn.to_string(), "16/B374D848");
                assert_eq!(commit_time, 0x0002_E53C_3A8F_1E40);
                assert_eq!(xid, 734);
            }
            other => panic!("{other:?}"),
        }
        let c = hex("43 00 00000016B374D848 00000016B374D878 0002E53C3A8F1E40");
        assert_eq!(c.len(), 26);
        match decode(&c).unwrap() {
            LogicalMessage::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                assert_eq!(flags, 0);
                assert_eq!(commit_lsn, Lsn(0x16_B374_D848));
                assert_eq!(end_lsn, Lsn(0x16_B374_D878));
                assert_eq!(commit_time, 0x0002_E53C_3A8F_1E40);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relation_message_by_hand() {
        // R, relid 16384, "public", "notes", 'd', 2 columns: key "id" int8, "body" text.
        let mut b = vec![b'R'];
        b.extend_from_slice(&16384u32.to_be_bytes());
        b.extend_from_slice(b"public\0notes\0d");
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(b"\x01id\0");
        b.extend_from_slice(&20u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(b"\x00body\0");
        b.extend_from_slice(&25u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let LogicalMessage::Relation(r) = decode(&b).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.id, 16384);
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("public", "notes"));
        assert_eq!(r.replica_identity, ReplicaIdentity::Default);
        assert_eq!(r.columns.len(), 2);
        assert!(r.columns[0].flags_key && !r.columns[1].flags_key);
        assert_eq!((r.columns[1].name.as_str(), r.columns[1].type_oid), ("body", 25));
        assert_eq!(r.columns[0].type_modifier, -1);
    }

    #[test]
    fn update_with_key_then_new_tuple() {
        // PK-changing UPDATE: 'K' with the key and 'n' for the other column, then 'N'.
        let b = hex("55 00004000 4B 0002 74 00000001 31 6E 4E 0002 74 00000001 32 74 00000002 6869");
        let m = decode(&b).unwrap();
        assert_eq!(
            m,
            LogicalMessage::Update {
                relation_id: 16384,
                old: Some(OldTuple::Key(TupleData(vec![text("1"), Cell::Null]))),
                new: TupleData(vec![text("2"), text("hi")]),
            }
        );
    }

    #[test]
    fn every_sample_round_trips() {
        for m in samples() {
            let b = encoded(&m);
            assert_eq!(decode(&b).unwrap(), m, "{b:02x?}");
            assert_eq!(decode_bytes(&Bytes::from(b)).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in samples() {
            let b = encoded(&m);
            for cut in 0..b.len() {
                is_decode_err(decode(&b[..cut]));
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for m in samples() {
            let mut b = encoded(&m);
            b.push(0);
            let e = is_decode_err(decode(&b));
            assert!(e.contains("trailing"), "{e}");
        }
    }

    #[test]
    fn unknown_tags_and_kinds_are_rejected() {
        for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', b'x', 0] {
            let e = is_decode_err(decode(&[tag, 0, 0, 0, 0]));
            assert!(e.contains("unknown pgoutput message tag"), "{e}");
        }
        // Insert without 'N'.
        is_decode_err(decode(&hex("49 00004000 4B 0000")));
        // Update: old tuple not followed by 'N'.
        is_decode_err(decode(&hex("55 00004000 4F 0000 4F 0000")));
        // Update with an unknown tuple kind.
        is_decode_err(decode(&hex("55 00004000 58 0000")));
        // Delete needs 'K' or 'O'.
        is_decode_err(decode(&hex("44 00004000 4E 0000")));
        // Unknown cell kind.
        is_decode_err(decode(&hex("49 00004000 4E 0001 78")));
        // Unknown replica identity.
        let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'x'];
        r.extend_from_slice(&0i16.to_be_bytes());
        is_decode_err(decode(&r));
        is_decode_err(decode(&[]));
    }

    #[test]
    fn huge_or_negative_declared_lengths_fail_without_allocating() {
        // Text cell claiming 2^31-1 bytes.
        is_decode_err(decode(&hex("49 00004000 4E 0001 74 7FFFFFFF 33")));
        // Negative text length.
        is_decode_err(decode(&hex("49 00004000 4E 0001 74 FFFFFFFF")));
        is_decode_err(decode(&hex("49 00004000 4E 0001 62 80000000")));
        // 32767 cells declared, 1 present.
        is_decode_err(decode(&hex("49 00004000 4E 7FFF 6E")));
        // Negative cell count.
        is_decode_err(decode(&hex("49 00004000 4E FFFF")));
        // Truncate claiming 2^31-1 relations; negative count.
        is_decode_err(decode(&hex("54 7FFFFFFF 00 00004000")));
        is_decode_err(decode(&hex("54 FFFFFFFF 00")));
        // Relation claiming 32767 columns.
        let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'd'];
        r.extend_from_slice(&i16::MAX.to_be_bytes());
        r.extend_from_slice(b"\x00a\0\0\0\0\x19\xff\xff\xff\xff");
        is_decode_err(decode(&r));
        // Negative column count.
        let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'd'];
        r.extend_from_slice(&(-1i16).to_be_bytes());
        is_decode_err(decode(&r));
        // Message content claiming 2^31-1 bytes; negative length.
        let mut m = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 0];
        m.extend_from_slice(&i32::MAX.to_be_bytes());
        is_decode_err(decode(&m));
        let mut m = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 0];
        m.extend_from_slice(&(-5i32).to_be_bytes());
        is_decode_err(decode(&m));
    }

    #[test]
    fn strings_without_nul_fail() {
        is_decode_err(decode(b"O\0\0\0\0\0\0\0\x01origin"));
        is_decode_err(decode(b"Y\0\0\0\x01public\0mood"));
    }

    #[test]
    fn invalid_utf8_names_are_replaced_not_fatal() {
        let m = decode(b"Y\0\0\0\x01pub\xfflic\0mood\0").unwrap();
        assert_eq!(
            m,
            LogicalMessage::Type {
                id: 1,
                namespace: "pub\u{fffd}lic".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn unknown_column_flag_bits_are_ignored() {
        let mut b = vec![b'R', 0, 0, 0, 1, b's', 0, b't', 0, b'd'];
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(b"\x03a\0\0\0\0\x17\xff\xff\xff\xff");
        let LogicalMessage::Relation(r) = decode(&b).unwrap() else {
            panic!()
        };
        assert!(r.columns[0].flags_key);
        assert_eq!(r.columns[0].type_oid, 23);
    }

    #[test]
    fn decode_bytes_slices_without_copying() {
        let b = Bytes::from(hex("49 00004000 4E 0001 74 00000003 616263"));
        let LogicalMessage::Insert { new, .. } = decode_bytes(&b).unwrap() else {
            panic!()
        };
        let Cell::Text(v) = &new.0[0] else { panic!() };
        assert_eq!(&v[..], b"abc");
        // Same allocation: the value points into the message.
        assert_eq!(v.as_ptr(), b[b.len() - 3..].as_ptr());
    }

    #[test]
    fn message_flags() {
        let m = encoded(&LogicalMessage::Message {
            transactional: true,
            lsn: Lsn(1),
            prefix: "p".into(),
            content: Bytes::from_static(b"x"),
        });
        assert_eq!(m[1], 1);
        let mut nt = m.clone();
        nt[1] = 0;
        assert!(matches!(
            decode(&nt).unwrap(),
            LogicalMessage::Message {
                transactional: false,
                ..
            }
        ));
    }

    #[test]
    fn timestamps_convert_to_unix() {
        assert_eq!(pg_to_unix_micros(0), 946_684_800_000_000);
        // 2025-11-19T00:22:40.877123Z
        assert_eq!(pg_to_unix_micros(816_826_960_877_123), 1_763_511_760_877_123);
        assert_eq!(pg_to_unix_micros(i64::MAX), i64::MAX);
        assert_eq!(pg_to_unix_micros(i64::MIN), i64::MIN + 946_684_800_000_000);
    }
}
