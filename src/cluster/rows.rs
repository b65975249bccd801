//! Row changes between nodes: the leader (the node holding the replication lease) streams
//! the slot once and relays each batch; every node delivers it to its own subscribers
//! (filters and RLS run on the subscriber's node). Two parts:
//!
//! * the codec of a relayed [`Batch`] (tables included once per batch, values as the
//!   pgoutput text or bytes they arrived as), with each transaction's offset: where this
//!   part of the transaction starts in it, so a receiver can tell a continuation from a
//!   transaction sent again from its start;
//! * [`Dedupe`]: after a failover the new leader resumes from the slot's confirmed
//!   position, so it sends again what the old leader may already have relayed; a node
//!   delivers each change of a transaction once, by commit LSN and position.

use std::ops::Range;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::{BufMut, BytesMut};
use realtime_wal::change::{Cell, ChangeKind, OldTuple, Relation, RowChange, TupleData};
use realtime_wal::pgoutput::{Column, ReplicaIdentity};
use realtime_wal::Lsn;

use super::envelope::{put_str16, Malformed, Reader};
use crate::replication::{Batch, Transaction};

/// Appends a batch whose transaction `i` starts at change `offsets[i]` of its transaction.
pub fn encode(out: &mut BytesMut, batch: &Batch, offsets: &[usize]) -> Option<()> {
    // Each table once, in order of first use.
    let mut tables: Vec<&Arc<Relation>> = Vec::new();
    let mut index: AHashMap<*const Relation, u32> = AHashMap::new();
    let mut table_of = Vec::with_capacity(batch.changes.len());
    for change in &batch.changes {
        let ptr = Arc::as_ptr(&change.relation);
        let i = *index.entry(ptr).or_insert_with(|| {
            tables.push(&change.relation);
            (tables.len() - 1) as u32
        });
        table_of.push(i);
    }
    out.put_u32_le(u32::try_from(tables.len()).ok()?);
    for r in tables {
        out.put_u32_le(r.id);
        put_str16(out, &r.namespace)?;
        put_str16(out, &r.name)?;
        out.put_u8(match r.replica_identity {
            ReplicaIdentity::Default => 0,
            ReplicaIdentity::Nothing => 1,
            ReplicaIdentity::Full => 2,
            ReplicaIdentity::Index => 3,
        });
        out.put_u16_le(u16::try_from(r.columns.len()).ok()?);
        for c in &r.columns {
            out.put_u8(u8::from(c.flags_key));
            put_str16(out, &c.name)?;
            out.put_u32_le(c.type_oid);
            out.put_i32_le(c.type_modifier);
        }
    }
    out.put_u32_le(u32::try_from(batch.transactions.len()).ok()?);
    for (t, offset) in batch
        .transactions
        .iter()
        .zip(offsets.iter().chain(std::iter::repeat(&0)))
    {
        out.put_u32_le(t.xid);
        out.put_i64_le(t.commit_time_us);
        out.put_u64_le(t.final_lsn.0);
        out.put_u64_le(t.end_lsn.map_or(0, |l| l.0));
        out.put_u32_le(u32::try_from(t.changes.start).ok()?);
        out.put_u32_le(u32::try_from(t.changes.end).ok()?);
        out.put_u32_le(u32::try_from(*offset).ok()?);
    }
    out.put_u32_le(u32::try_from(batch.changes.len()).ok()?);
    for (change, table) in batch.changes.iter().zip(table_of) {
        out.put_u32_le(table);
        out.put_u8(match change.kind {
            ChangeKind::Insert => 0,
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
        });
        match &change.new {
            Some(t) => {
                out.put_u8(1);
                put_tuple(out, t)?;
            }
            None => out.put_u8(0),
        }
        match &change.old {
            None => out.put_u8(0),
            Some(OldTuple::Key(t)) => {
                out.put_u8(1);
                put_tuple(out, t)?;
            }
            Some(OldTuple::Full(t)) => {
                out.put_u8(2);
                put_tuple(out, t)?;
            }
        }
    }
    Some(())
}

fn put_tuple(out: &mut BytesMut, t: &TupleData) -> Option<()> {
    out.put_u16_le(u16::try_from(t.0.len()).ok()?);
    for cell in &t.0 {
        match cell {
            Cell::Null => out.put_u8(0),
            Cell::Unchanged => out.put_u8(1),
            Cell::Text(b) | Cell::Binary(b) => {
                out.put_u8(if matches!(cell, Cell::Text(_)) { 2 } else { 3 });
                out.put_u32_le(u32::try_from(b.len()).ok()?);
                out.put_slice(b);
            }
        }
    }
    Some(())
}

/// A relayed batch and each transaction's offset in its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed {
    pub batch: Batch,
    pub offsets: Vec<usize>,
}

/// Reads a relayed batch; every index and range is checked against what was read.
pub(super) fn decode(r: &mut Reader<'_>) -> Result<Relayed, Malformed> {
    let bad = |why| Err(Malformed::Invalid(why));
    let n_tables = r.u32()? as usize;
    let mut tables = Vec::with_capacity(n_tables.min(r.remaining() / 12));
    for _ in 0..n_tables {
        let id = r.u32()?;
        let namespace = r.str16()?.to_owned();
        let name = r.str16()?.to_owned();
        let replica_identity = match r.u8()? {
            0 => ReplicaIdentity::Default,
            1 => ReplicaIdentity::Nothing,
            2 => ReplicaIdentity::Full,
            3 => ReplicaIdentity::Index,
            _ => return bad("unknown replica identity"),
        };
        let n_columns = u16::from_le_bytes([r.u8()?, r.u8()?]) as usize;
        let mut columns = Vec::with_capacity(n_columns.min(r.remaining() / 11));
        for _ in 0..n_columns {
            let flags_key = r.u8()? != 0;
            let name = r.str16()?.to_owned();
            let type_oid = r.u32()?;
            let type_modifier = r.u32()? as i32;
            columns.push(Column {
                flags_key,
                name,
                type_oid,
                type_modifier,
            });
        }
        tables.push(Arc::new(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        }));
    }
    let n_transactions = r.u32()? as usize;
    let mut transactions = Vec::with_capacity(n_transactions.min(r.remaining() / 40));
    let mut offsets = Vec::with_capacity(transactions.capacity());
    for _ in 0..n_transactions {
        let xid = r.u32()?;
        let commit_time_us = r.u64()? as i64;
        let final_lsn = Lsn(r.u64()?);
        let end_lsn = Some(r.u64()?).filter(|l| *l != 0).map(Lsn);
        let changes = r.u32()? as usize..r.u32()? as usize;
        offsets.push(r.u32()? as usize);
        transactions.push(Transaction {
            xid,
            commit_time_us,
            final_lsn,
            end_lsn,
            changes,
        });
    }
    let n_changes = r.u32()? as usize;
    let mut changes = Vec::with_capacity(n_changes.min(r.remaining() / 8));
    for _ in 0..n_changes {
        let Some(relation) = tables.get(r.u32()? as usize).cloned() else {
            return bad("unknown table index");
        };
        let kind = match r.u8()? {
            0 => ChangeKind::Insert,
            1 => ChangeKind::Update,
            2 => ChangeKind::Delete,
            _ => return bad("unknown change kind"),
        };
        let new = match r.u8()? {
            0 => None,
            1 => Some(tuple(r)?),
            _ => return bad("unknown new-tuple flag"),
        };
        let old = match r.u8()? {
            0 => None,
            1 => Some(OldTuple::Key(tuple(r)?)),
            2 => Some(OldTuple::Full(tuple(r)?)),
            _ => return bad("unknown old-tuple kind"),
        };
        changes.push(RowChange {
            relation,
            kind,
            new,
            old,
        });
    }
    // Ranges must cover the changes in order, without overlap, as the batcher makes them.
    let mut next = 0;
    for t in &transactions {
        if t.changes.start != next || t.changes.end < t.changes.start || t.changes.end > changes.len() {
            return bad("transaction ranges do not match the changes");
        }
        next = t.changes.end;
    }
    if next != changes.len() {
        return bad("changes outside every transaction");
    }
    Ok(Relayed {
        batch: Batch { changes, transactions },
        offsets,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, Malformed> {
    let n = u16::from_le_bytes([r.u8()?, r.u8()?]) as usize;
    let mut cells = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        cells.push(match r.u8()? {
            0 => Cell::Null,
            1 => Cell::Unchanged,
            2 => {
                let len = r.u32()? as usize;
                Cell::Text(r.take(len)?)
            }
            3 => {
                let len = r.u32()? as usize;
                Cell::Binary(r.take(len)?)
            }
            _ => return Err(Malformed::Invalid("unknown cell kind")),
        });
    }
    Ok(TupleData(cells))
}

/// The offsets of a leader's batches: where each transaction's part starts in the
/// transaction (this process' stream never hands a change twice, so parts follow on).
#[derive(Debug, Default)]
pub struct Offsets {
    current: Option<(Lsn, usize)>,
}

impl Offsets {
    /// Each transaction's offset in `batch`.
    pub fn of(&mut self, batch: &Batch) -> Vec<usize> {
        batch
            .transactions
            .iter()
            .map(|t| {
                let offset = match self.current {
                    Some((lsn, sent)) if lsn == t.final_lsn => sent,
                    _ => 0,
                };
                self.current = Some((t.final_lsn, offset + t.changes.len()));
                offset
            })
            .collect()
    }
}

/// What this node delivered: transactions complete up to a commit LSN, and how far into
/// the one after it.
#[derive(Debug, Default)]
pub struct Dedupe {
    complete: Option<Lsn>,
    partial: Option<(Lsn, usize)>,
}

impl Dedupe {
    /// The part of `batch` not delivered yet (transactions keep their order; parts
    /// already delivered are left out).
    pub fn filter(&mut self, batch: &Batch, offsets: &[usize]) -> Batch {
        let mut out = Batch::default();
        for (i, t) in batch.transactions.iter().enumerate() {
            let offset = offsets.get(i).copied().unwrap_or(0);
            let len = t.changes.len();
            if self.complete.is_some_and(|c| t.final_lsn <= c) {
                continue;
            }
            let delivered = match self.partial {
                Some((lsn, n)) if lsn == t.final_lsn => n,
                _ => 0,
            };
            let keep: Range<usize> = delivered.clamp(offset, offset + len) - offset..len;
            let start = out.changes.len();
            out.changes
                .extend(batch.changes[t.changes.clone()][keep].iter().cloned());
            out.transactions.push(Transaction {
                changes: start..out.changes.len(),
                ..t.clone()
            });
            if t.end_lsn.is_some() {
                self.complete = Some(t.final_lsn);
                self.partial = None;
            } else {
                self.partial = Some((t.final_lsn, delivered.max(offset + len)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn change(rel: &Arc<Relation>, n: u8) -> RowChange {
        RowChange {
            relation: rel.clone(),
            kind: ChangeKind::Insert,
            new: Some(TupleData(vec![Cell::Text(Bytes::from(vec![b'0' + n])), Cell::Null])),
            old: None,
        }
    }

    fn relation() -> Arc<Relation> {
        Arc::new(Relation {
            id: 16384,
            namespace: "public".into(),
            name: "todos".into(),
            replica_identity: ReplicaIdentity::Full,
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
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        })
    }

    /// A batch of one transaction part: changes `from..to` of transaction `lsn`.
    fn part(lsn: u64, from: u8, to: u8, last: bool) -> Batch {
        let rel = relation();
        let changes: Vec<RowChange> = (from..to).map(|n| change(&rel, n)).collect();
        Batch {
            transactions: vec![Transaction {
                xid: 7,
                commit_time_us: 1,
                final_lsn: Lsn(lsn),
                end_lsn: last.then_some(Lsn(lsn + 8)),
                changes: 0..changes.len(),
            }],
            changes,
        }
    }

    fn values(b: &Batch) -> Vec<u8> {
        b.changes
            .iter()
            .map(|c| match &c.new.as_ref().expect("new").0[0] {
                Cell::Text(t) => t[0] - b'0',
                _ => panic!("text expected"),
            })
            .collect()
    }

    #[test]
    fn a_batch_round_trips_and_garbage_is_refused() {
        let mut b = part(100, 0, 3, true);
        b.changes[1].kind = ChangeKind::Update;
        b.changes[1].old = Some(OldTuple::Full(TupleData(vec![
            Cell::Unchanged,
            Cell::Binary(Bytes::from_static(&[0, 255])),
        ])));
        let mut out = BytesMut::new();
        encode(&mut out, &b, &[5]).expect("encodes");
        let bytes = out.freeze();
        let decoded = decode(&mut Reader { bytes: &bytes, at: 0 }).expect("decodes");
        assert_eq!(
            decoded,
            Relayed {
                batch: b,
                offsets: vec![5]
            }
        );
        for len in 0..bytes.len() {
            assert!(
                decode(&mut Reader {
                    bytes: &bytes.slice(..len),
                    at: 0
                })
                .is_err(),
                "cut at {len}"
            );
        }
        for i in 0..bytes.len() {
            let mut v = bytes.to_vec();
            v[i] ^= 0xff;
            let v = Bytes::from(v);
            let _ = decode(&mut Reader { bytes: &v, at: 0 });
        }
    }

    #[test]
    fn a_transaction_sent_again_after_a_failover_is_delivered_once() {
        let mut d = Dedupe::default();
        // The old leader relays the first 3 changes of transaction 100, then dies.
        assert_eq!(values(&d.filter(&part(100, 0, 3, false), &[0])), [0, 1, 2]);
        // The new leader streams 100 again from its start, in one part, then 200.
        assert_eq!(values(&d.filter(&part(100, 0, 5, true), &[0])), [3, 4]);
        assert_eq!(
            values(&d.filter(&part(100, 0, 5, true), &[0])),
            Vec::<u8>::new(),
            "complete: never again"
        );
        assert_eq!(values(&d.filter(&part(200, 0, 2, true), &[0])), [0, 1]);
        assert_eq!(
            values(&d.filter(&part(150, 0, 2, true), &[0])),
            Vec::<u8>::new(),
            "older than delivered"
        );
    }

    #[test]
    fn leader_offsets_follow_parts_of_one_transaction() {
        let mut o = Offsets::default();
        assert_eq!(o.of(&part(100, 0, 3, false)), [0]);
        assert_eq!(o.of(&part(100, 3, 5, true)), [3]);
        assert_eq!(o.of(&part(200, 0, 1, true)), [0]);
        let mut d = Dedupe::default();
        assert_eq!(values(&d.filter(&part(100, 0, 3, false), &[0])), [0, 1, 2]);
        assert_eq!(
            values(&d.filter(&part(100, 3, 5, true), &[3])),
            [3, 4],
            "a continuation is not a repeat"
        );
    }
}
