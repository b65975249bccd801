//! From a session's transaction events to batches for a sink, and what was handed to it.
//! Pure (no I/O, no clock) so the delivery rules are tested without Postgres:
//!
//! * a batch holds at most [`CHUNK`] changes, of one or many transactions in commit order;
//!   a larger transaction is handed over in chunks before its Commit arrives;
//! * a transaction that ends before the last acknowledged position was handed already
//!   (PostgreSQL 15 streams acknowledged transactions again after it restarts: the slot's
//!   position is saved only at checkpoints): its changes are dropped, its end acknowledged
//!   again;
//! * a transaction interrupted by a lost connection is streamed again whole by the next
//!   session: the changes of it handed before are counted ([`Progress::partial`]) and
//!   dropped when they come again, so each is handed once.

use std::ops::Range;

use realtime_wal::change::{Event, RowChange};
use realtime_wal::{Lsn, WalError};
use tracing::debug;

/// Most changes per batch (for Postgres Changes: per RLS round).
pub const CHUNK: usize = 512;

/// One transaction's part of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id.
    pub xid: u32,
    /// Commit time, µs since the Unix epoch.
    pub commit_time_us: i64,
    /// LSN of the commit record (the same in every session that streams it).
    pub final_lsn: Lsn,
    /// Set when the batch holds the transaction's end: the position just past its commit
    /// record, acknowledged once the batch is handled. `None`: more of it follows.
    pub end_lsn: Option<Lsn>,
    /// Its changes in [`Batch::changes`] (may be empty: a transaction delivered already,
    /// or one whose changes all went out in earlier batches).
    pub changes: Range<usize>,
}

/// Decoded, assembled changes handed to a sink at once, in commit order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The changes.
    pub changes: Vec<RowChange>,
    /// The transactions they belong to, in order.
    pub transactions: Vec<Transaction>,
}

impl Batch {
    /// Each change's commit time (µs since the Unix epoch), in order.
    pub fn commit_times(&self) -> Vec<i64> {
        let mut times = Vec::with_capacity(self.changes.len());
        for t in &self.transactions {
            times.extend(std::iter::repeat_n(t.commit_time_us, t.changes.len()));
        }
        times
    }

    /// Ids of the transactions that have changes in this batch, each once.
    pub fn xids(&self) -> Vec<u32> {
        let mut xids: Vec<u32> = Vec::new();
        for t in self.transactions.iter().filter(|t| !t.changes.is_empty()) {
            if xids.last() != Some(&t.xid) {
                xids.push(t.xid);
            }
        }
        xids
    }
}

/// The last transaction a handled batch completed: what to acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// Position just past its commit record.
    pub end_lsn: Lsn,
    /// Its commit time (µs since the Unix epoch).
    pub commit_time_us: i64,
}

/// What was handed to the sink, kept across sessions (not across processes: the slot's
/// position is what survives a restart).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Progress {
    /// End of the last transaction handed completely.
    last_acked: Lsn,
    /// The transaction being handed in chunks: its commit LSN and how many of its changes
    /// (counted in stream order) the sink has.
    partial: Option<(Lsn, usize)>,
}

/// The transaction being read.
#[derive(Debug)]
struct Open {
    final_lsn: Lsn,
    /// Handed completely before (see the module docs): drop its changes.
    replayed: bool,
    /// Its changes read so far in this session.
    seen: usize,
    /// Its first changes the sink already has.
    skip: usize,
}

/// Builds batches and keeps [`Progress`]; one per stream, for the life of the process.
#[derive(Debug, Default)]
pub struct Batcher {
    progress: Progress,
    open: Option<Open>,
    batch: Batch,
}

impl Batcher {
    /// A session starts: whatever the last one read but did not hand over is dropped
    /// (Postgres streams it again from the acknowledged position).
    pub fn session_start(&mut self) {
        self.open = None;
        self.batch = Batch::default();
    }

    /// Takes one event of the stream. A change outside a transaction or a Begin inside
    /// one means a lost or reordered message: a [`WalError::Protocol`].
    pub fn push(&mut self, event: Event) -> Result<(), WalError> {
        match event {
            Event::Begin {
                final_lsn,
                commit_time_us,
                xid,
            } => {
                if self.open.is_some() {
                    return Err(WalError::Protocol(format!("Begin of {final_lsn} inside a transaction")));
                }
                let replayed = final_lsn < self.progress.last_acked;
                if replayed {
                    debug!(%final_lsn, "skipping a transaction already delivered");
                }
                let skip = match self.progress.partial {
                    Some((lsn, n)) if lsn == final_lsn && !replayed => n,
                    _ => 0,
                };
                if skip > 0 {
                    debug!(%final_lsn, skip, "a transaction interrupted by a lost connection is streamed again; skipping what was delivered");
                }
                self.open = Some(Open {
                    final_lsn,
                    replayed,
                    seen: 0,
                    skip,
                });
                let at = self.batch.changes.len();
                self.batch.transactions.push(Transaction {
                    xid,
                    commit_time_us,
                    final_lsn,
                    end_lsn: None,
                    changes: at..at,
                });
            }
            Event::Change(change) => {
                let (Some(open), Some(tx)) = (self.open.as_mut(), self.batch.transactions.last_mut()) else {
                    return Err(WalError::Protocol("a row change outside a transaction".into()));
                };
                open.seen += 1;
                if open.replayed || open.seen <= open.skip {
                    return Ok(());
                }
                self.batch.changes.push(change);
                tx.changes.end = self.batch.changes.len();
            }
            Event::Commit { end_lsn, .. } => {
                let (Some(_), Some(tx)) = (self.open.take(), self.batch.transactions.last_mut()) else {
                    return Err(WalError::Protocol(format!("Commit of {end_lsn} outside a transaction")));
                };
                tx.end_lsn = Some(end_lsn);
            }
            Event::Truncate { .. } => debug!("TRUNCATE is not delivered (as in Supabase)"),
        }
        Ok(())
    }

    /// Nothing read is waiting to be handed or acknowledged, and no transaction is open:
    /// a keepalive's end of WAL may be acknowledged.
    pub fn idle(&self) -> bool {
        self.open.is_none() && self.batch.transactions.is_empty()
    }

    /// The batch holds [`CHUNK`] changes: stop reading and hand it over.
    pub fn full(&self) -> bool {
        self.batch.changes.len() >= CHUNK
    }

    /// Whether to hand the batch over now (once the messages already received are read):
    /// when it is full, or when it ends with a complete transaction.
    pub fn ready(&self) -> bool {
        self.full() || (self.open.is_none() && !self.batch.transactions.is_empty())
    }

    /// What to hand over.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Hands the batch over by value, as [`Batcher::handed`] does: the sink may keep it
    /// while the driver reads on.
    pub fn take(&mut self) -> (Batch, Option<Completed>) {
        let batch = Batch {
            changes: std::mem::take(&mut self.batch.changes),
            transactions: self.batch.transactions.clone(),
        };
        (batch, self.handed())
    }

    /// The sink has the batch. Records it, starts the next batch, and returns the last
    /// transaction it completed (to acknowledge), if any.
    pub fn handed(&mut self) -> Option<Completed> {
        let completed = self.batch.transactions.iter().rev().find_map(|t| {
            t.end_lsn.map(|end_lsn| Completed {
                end_lsn,
                commit_time_us: t.commit_time_us,
            })
        });
        if let Some(done) = completed {
            self.progress.last_acked = self.progress.last_acked.max(done.end_lsn);
            // A transaction that commits before the acknowledged position is never
            // streamed again as new.
            if matches!(self.progress.partial, Some((lsn, _)) if lsn < done.end_lsn) {
                self.progress.partial = None;
            }
        }
        let last = self.batch.transactions.pop();
        self.batch.changes.clear();
        self.batch.transactions.clear();
        if let (Some(open), Some(mut tx)) = (self.open.as_ref(), last) {
            if !open.replayed && open.seen > open.skip {
                self.progress.partial = Some((open.final_lsn, open.seen));
            }
            // The rest of the open transaction goes in the next batch.
            tx.changes = 0..0;
            self.batch.transactions.push(tx);
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use realtime_wal::change::{ChangeKind, Relation, TupleData};
    use realtime_wal::pgoutput::ReplicaIdentity;

    use super::*;

    fn change(n: usize) -> Event {
        Event::Change(RowChange {
            relation: Arc::new(Relation {
                id: 1,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: Vec::new(),
            }),
            kind: ChangeKind::Insert,
            new: Some(TupleData(vec![realtime_wal::change::Cell::Text(n.to_string().into())])),
            old: None,
        })
    }

    fn begin(final_lsn: u64, xid: u32) -> Event {
        Event::Begin {
            final_lsn: Lsn(final_lsn),
            commit_time_us: i64::from(xid) * 1000,
            xid,
        }
    }

    fn commit(final_lsn: u64) -> Event {
        Event::Commit {
            commit_lsn: Lsn(final_lsn),
            end_lsn: Lsn(final_lsn + 8),
            commit_time_us: 0,
        }
    }

    /// The row numbers in the batch.
    fn rows(b: &Batcher) -> Vec<usize> {
        b.batch()
            .changes
            .iter()
            .map(|c| match c.new.as_ref().map(|t| &t.0[..]) {
                Some([realtime_wal::change::Cell::Text(t)]) => std::str::from_utf8(t).unwrap().parse().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Reads a transaction of `n` changes, handing full batches as they fill; returns the
    /// rows handed and the acknowledgements. Stops after `stop_after` changes (a lost
    /// connection) when given.
    fn read(b: &mut Batcher, lsn: u64, n: usize, stop_after: Option<usize>) -> (Vec<usize>, Vec<Completed>) {
        let mut handed = Vec::new();
        let mut acks = Vec::new();
        b.push(begin(lsn, 7)).unwrap();
        for i in 1..=n {
            if stop_after == Some(i - 1) {
                return (handed, acks);
            }
            b.push(change(i)).unwrap();
            if b.full() {
                handed.extend(rows(b));
                acks.extend(b.handed());
            }
        }
        b.push(commit(lsn)).unwrap();
        assert!(b.ready());
        handed.extend(rows(b));
        acks.extend(b.handed());
        (handed, acks)
    }

    #[test]
    fn small_transactions_share_a_batch_and_the_last_end_is_acknowledged() {
        let mut b = Batcher::default();
        assert!(b.idle());
        b.push(begin(100, 1)).unwrap();
        b.push(change(1)).unwrap();
        assert!(!b.ready() && !b.idle());
        b.push(commit(100)).unwrap();
        b.push(begin(200, 2)).unwrap();
        b.push(change(2)).unwrap();
        b.push(change(3)).unwrap();
        assert!(!b.ready(), "the second transaction is still open");
        b.push(commit(200)).unwrap();
        assert!(b.ready());
        assert_eq!(rows(&b), vec![1, 2, 3]);
        assert_eq!(b.batch().commit_times(), vec![1000, 2000, 2000]);
        assert_eq!(b.batch().xids(), vec![1, 2]);
        assert_eq!(
            b.handed(),
            Some(Completed {
                end_lsn: Lsn(208),
                commit_time_us: 2000
            })
        );
        assert!(b.idle());
        assert_eq!(b.batch(), &Batch::default());
    }

    #[test]
    fn a_large_transaction_goes_in_chunks_and_only_its_end_is_acknowledged() {
        let mut b = Batcher::default();
        let (handed, acks) = read(&mut b, 100, 2 * CHUNK + 3, None);
        assert_eq!(handed, (1..=2 * CHUNK + 3).collect::<Vec<_>>());
        assert_eq!(acks.iter().map(|a| a.end_lsn).collect::<Vec<_>>(), vec![Lsn(108)]);
    }

    #[test]
    fn a_transaction_interrupted_mid_delivery_is_not_delivered_twice() {
        let mut b = Batcher::default();
        let n = 3 * CHUNK + 10;
        // Lost after two chunks were handed and some more read.
        let (first, acks) = read(&mut b, 100, n, Some(2 * CHUNK + 100));
        assert_eq!(first.len(), 2 * CHUNK);
        assert!(acks.is_empty());
        b.session_start();
        // Lost again before getting past what was handed.
        let (again, _) = read(&mut b, 100, n, Some(CHUNK));
        assert!(again.is_empty(), "{again:?}");
        b.session_start();
        let (rest, acks) = read(&mut b, 100, n, None);
        assert_eq!(rest, (2 * CHUNK + 1..=n).collect::<Vec<_>>());
        assert_eq!(acks.iter().map(|a| a.end_lsn).collect::<Vec<_>>(), vec![Lsn(108)]);
        // Another transaction at another position is delivered whole.
        let (next, _) = read(&mut b, 300, 5, None);
        assert_eq!(next, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn transactions_acknowledged_before_are_skipped_but_acknowledged_again() {
        let mut b = Batcher::default();
        read(&mut b, 100, 3, None);
        read(&mut b, 200, 3, None);
        b.session_start();
        // After a Postgres restart the slot resumed from an older position.
        let (again, acks) = read(&mut b, 100, 3, None);
        assert!(again.is_empty());
        assert_eq!(acks.iter().map(|a| a.end_lsn).collect::<Vec<_>>(), vec![Lsn(108)]);
        let (again, _) = read(&mut b, 200, 3, None);
        assert!(again.is_empty(), "ends at 208 > 200, but begins before it");
        let (new, _) = read(&mut b, 300, 2, None);
        assert_eq!(new, vec![1, 2]);
    }

    #[test]
    fn a_session_lost_with_unhanded_changes_drops_them_for_the_next_one() {
        let mut b = Batcher::default();
        b.push(begin(100, 1)).unwrap();
        b.push(change(1)).unwrap();
        b.session_start();
        assert!(b.idle());
        let (rows, _) = read(&mut b, 100, 2, None);
        assert_eq!(rows, vec![1, 2], "nothing was handed, so nothing is skipped");
    }

    #[test]
    fn out_of_order_messages_are_protocol_errors() {
        let mut b = Batcher::default();
        assert!(matches!(b.push(change(1)), Err(WalError::Protocol(_))));
        assert!(matches!(b.push(commit(1)), Err(WalError::Protocol(_))));
        b.push(begin(1, 1)).unwrap();
        assert!(matches!(b.push(begin(2, 2)), Err(WalError::Protocol(_))));
    }
}
