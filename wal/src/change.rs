//! What consumers of the replication stream see: transaction bounds and row changes whose
//! table shape is attached, built from decoded pgoutput messages by an [`Assembler`].
//!
//! The assembler keeps the [`RelationCache`] so that consumers never deal with Relation or
//! Type messages or with relation OIDs that still need resolving. It does no buffering: each
//! message yields at most one event, in stream order, so a large transaction is never held in
//! memory here (the consumer decides how much to batch before the Commit).

use std::sync::Arc;

use crate::lsn::Lsn;
use crate::pgoutput::{pg_to_unix_micros, LogicalMessage};
pub use crate::pgoutput::{Cell, OldTuple, Relation, TupleData};
use crate::relations::RelationCache;
use crate::WalError;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// One row change with its table's shape at the time of the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// The table, as the latest Relation message before this change described it; cells are
    /// in the order of `relation.columns`.
    pub relation: Arc<Relation>,
    /// INSERT, UPDATE or DELETE.
    pub kind: ChangeKind,
    /// The new row (INSERT, UPDATE); unchanged TOASTed values are [`Cell::Unchanged`].
    pub new: Option<TupleData>,
    /// The old key or row: always for DELETE; for UPDATE only when the replica identity
    /// changed (`Key`) or the table has REPLICA IDENTITY FULL (`Full`).
    pub old: Option<OldTuple>,
}

/// One step of the committed-change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction starts; the changes up to the next `Commit` belong to it.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, µs since the Unix epoch.
        commit_time_us: i64,
        /// Transaction id.
        xid: u32,
    },
    /// One row change of the current transaction.
    Change(RowChange),
    /// The current transaction committed. Acknowledge `end_lsn` once its changes are handled.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record: what to report as flushed.
        end_lsn: Lsn,
        /// Commit time, µs since the Unix epoch.
        commit_time_us: i64,
    },
    /// Tables of the current transaction were truncated.
    Truncate {
        /// The truncated tables.
        relations: Vec<Arc<Relation>>,
    },
}

/// Turns decoded pgoutput messages into [`Event`]s, resolving relation OIDs.
#[derive(Debug, Default)]
pub struct Assembler {
    relations: RelationCache,
}

impl Assembler {
    /// An assembler with an empty relation cache (one per replication session).
    pub fn new() -> Self {
        Self::default()
    }

    /// The relations and types seen so far.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// Feeds one message. Relation and Type messages update the cache and give `None`, as do
    /// Origin and logical-decoding `Message`s (not used here). A change or truncate naming a
    /// relation that no Relation message described is a [`WalError::Decode`]: pgoutput always
    /// sends the Relation first, so this means a lost or reordered message.
    pub fn push(&mut self, msg: LogicalMessage) -> Result<Option<Event>, WalError> {
        let event = match msg {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => Event::Begin {
                final_lsn,
                commit_time_us: pg_to_unix_micros(commit_time),
                xid,
            },
            LogicalMessage::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => Event::Commit {
                commit_lsn,
                end_lsn,
                commit_time_us: pg_to_unix_micros(commit_time),
            },
            LogicalMessage::Relation(relation) => {
                self.relations.insert(relation);
                return Ok(None);
            }
            LogicalMessage::Type { id, namespace, name } => {
                self.relations.insert_type(id, namespace, name);
                return Ok(None);
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Message { .. } => return Ok(None),
            LogicalMessage::Insert { relation_id, new } => Event::Change(RowChange {
                relation: self.relation(relation_id, "INSERT")?,
                kind: ChangeKind::Insert,
                new: Some(new),
                old: None,
            }),
            LogicalMessage::Update { relation_id, old, new } => Event::Change(RowChange {
                relation: self.relation(relation_id, "UPDATE")?,
                kind: ChangeKind::Update,
                new: Some(new),
                old,
            }),
            LogicalMessage::Delete { relation_id, old } => Event::Change(RowChange {
                relation: self.relation(relation_id, "DELETE")?,
                kind: ChangeKind::Delete,
                new: None,
                old: Some(old),
            }),
            LogicalMessage::Truncate { relation_ids, .. } => Event::Truncate {
                relations: relation_ids
                    .into_iter()
                    .map(|id| self.relation(id, "TRUNCATE"))
                    .collect::<Result<_, _>>()?,
            },
        };
        Ok(Some(event))
    }

    fn relation(&self, id: u32, what: &str) -> Result<Arc<Relation>, WalError> {
        self.relations
            .get(id)
            .cloned()
            .ok_or_else(|| WalError::Decode(format!("{what} for relation {id}, which no Relation message described")))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pgoutput::{Column, ReplicaIdentity};

    fn rel(id: u32, cols: &[&str]) -> Relation {
        Relation {
            id,
            namespace: "public".into(),
            name: format!("t{id}"),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| Column {
                    flags_key: i == 0,
                    name: (*c).into(),
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn row(vals: &[&str]) -> TupleData {
        TupleData(
            vals.iter()
                .map(|v| Cell::Text(Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
        )
    }

    #[test]
    fn a_transaction_in_order() {
        let mut a = Assembler::new();
        let begin = a
            .push(LogicalMessage::Begin {
                final_lsn: Lsn(0x100),
                commit_time: 0,
                xid: 7,
            })
            .unwrap();
        assert_eq!(
            begin,
            Some(Event::Begin {
                final_lsn: Lsn(0x100),
                commit_time_us: 946_684_800_000_000,
                xid: 7
            })
        );
        assert_eq!(a.push(LogicalMessage::Relation(rel(1, &["id", "v"]))).unwrap(), None);
        assert_eq!(
            a.push(LogicalMessage::Type {
                id: 9000,
                namespace: "public".into(),
                name: "mood".into()
            })
            .unwrap(),
            None
        );
        assert_eq!(a.relations().type_oid("public", "mood"), Some(9000));

        let Some(Event::Change(ins)) = a
            .push(LogicalMessage::Insert {
                relation_id: 1,
                new: row(&["1", "a"]),
            })
            .unwrap()
        else {
            panic!("no change")
        };
        assert_eq!(ins.kind, ChangeKind::Insert);
        assert_eq!(ins.relation.name, "t1");
        assert_eq!(ins.new, Some(row(&["1", "a"])));
        assert_eq!(ins.old, None);

        let Some(Event::Change(up)) = a
            .push(LogicalMessage::Update {
                relation_id: 1,
                old: Some(OldTuple::Key(TupleData(vec![
                    Cell::Text(Bytes::from_static(b"1")),
                    Cell::Null,
                ]))),
                new: row(&["2", "a"]),
            })
            .unwrap()
        else {
            panic!("no change")
        };
        assert_eq!(up.kind, ChangeKind::Update);
        assert!(matches!(up.old, Some(OldTuple::Key(_))));

        let Some(Event::Change(del)) = a
            .push(LogicalMessage::Delete {
                relation_id: 1,
                old: OldTuple::Full(row(&["2", "a"])),
            })
            .unwrap()
        else {
            panic!("no change")
        };
        assert_eq!(del.kind, ChangeKind::Delete);
        assert_eq!(del.new, None);
        assert_eq!(del.old.as_ref().unwrap().tuple(), &row(&["2", "a"]));

        let commit = a
            .push(LogicalMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_time: 1_000_000,
            })
            .unwrap();
        assert_eq!(
            commit,
            Some(Event::Commit {
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_time_us: 946_684_801_000_000
            })
        );
    }

    #[test]
    fn unknown_relations_are_errors() {
        let mut a = Assembler::new();
        for m in [
            LogicalMessage::Insert {
                relation_id: 5,
                new: row(&["1"]),
            },
            LogicalMessage::Update {
                relation_id: 5,
                old: None,
                new: row(&["1"]),
            },
            LogicalMessage::Delete {
                relation_id: 5,
                old: OldTuple::Key(row(&["1"])),
            },
            LogicalMessage::Truncate {
                options: 0,
                relation_ids: vec![5],
            },
        ] {
            assert!(matches!(a.push(m), Err(WalError::Decode(_))));
        }
    }

    #[test]
    fn relations_are_replaced_and_old_changes_keep_their_shape() {
        let mut a = Assembler::new();
        a.push(LogicalMessage::Relation(rel(1, &["id"]))).unwrap();
        let Some(Event::Change(before)) = a
            .push(LogicalMessage::Insert {
                relation_id: 1,
                new: row(&["1"]),
            })
            .unwrap()
        else {
            panic!()
        };
        a.push(LogicalMessage::Relation(rel(1, &["id", "added"]))).unwrap();
        let Some(Event::Change(after)) = a
            .push(LogicalMessage::Insert {
                relation_id: 1,
                new: row(&["2", "x"]),
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(before.relation.columns.len(), 1);
        assert_eq!(after.relation.columns.len(), 2);
    }

    #[test]
    fn truncate_resolves_every_relation_and_other_messages_are_ignored() {
        let mut a = Assembler::new();
        a.push(LogicalMessage::Relation(rel(1, &["id"]))).unwrap();
        a.push(LogicalMessage::Relation(rel(2, &["id"]))).unwrap();
        let Some(Event::Truncate { relations }) = a
            .push(LogicalMessage::Truncate {
                options: 1,
                relation_ids: vec![2, 1],
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(relations.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(
            a.push(LogicalMessage::Origin {
                commit_lsn: Lsn(1),
                name: "o".into()
            })
            .unwrap(),
            None
        );
        assert_eq!(
            a.push(LogicalMessage::Message {
                transactional: false,
                lsn: Lsn(1),
                prefix: "p".into(),
                content: Bytes::new()
            })
            .unwrap(),
            None
        );
    }
}
