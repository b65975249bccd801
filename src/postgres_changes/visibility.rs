//! RLS checks read the live rows, so they must run in a snapshot that sees the round's
//! transactions.
//!
//! Postgres flushes a commit record (and so may stream it) before it makes the
//! transaction visible to other sessions; a check in between would judge a committed row
//! missing and drop it for every viewer. Seen in the bench on a busy machine with
//! `synchronous_commit = on`.
//!
//! It is almost always visible by the time a round checks, so the shared check proves it
//! inside its own statement ([`not_visible`] over its own snapshot) instead of asking
//! first: a round trip less per round. Only when that says no does the round wait
//! ([`Pending::wait`]) and check again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::pool::Pool;

/// How long [`Pending::wait`] waits at most.
const VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// SQL counting the transactions among `ids` (an `int8[]` expression of 32-bit xids)
/// that the statement's snapshot does not see yet (the ids are widened with the epoch of
/// the snapshot's xmax).
pub fn not_visible(ids: &str) -> String {
    format!(
        "select count(*) from unnest({ids}) x, (select txid_current_snapshot() s) q \
         where not txid_visible_in_snapshot(case when x <= (txid_snapshot_xmax(q.s) & 4294967295) \
           then ((txid_snapshot_xmax(q.s) >> 32) << 32) | x \
           else (greatest((txid_snapshot_xmax(q.s) >> 32) - 1, 0) << 32) | x end, q.s)"
    )
}

/// A round's transactions, until some statement has seen them all.
pub struct Pending {
    xids: Vec<i64>,
    seen: AtomicBool,
}

impl Pending {
    /// `xids`: the transactions of the round's changes.
    pub fn new(xids: &[u32]) -> Pending {
        Pending {
            xids: xids.iter().map(|&x| i64::from(x)).collect(),
            seen: AtomicBool::new(xids.is_empty()),
        }
    }

    /// What a statement must still find visible in its own snapshot: nothing once one
    /// did (every later snapshot sees them too).
    pub fn unseen(&self) -> &[i64] {
        if self.seen.load(Ordering::Acquire) {
            &[]
        } else {
            &self.xids
        }
    }

    /// A statement's snapshot saw them all.
    pub fn saw(&self) {
        self.seen.store(true, Ordering::Release);
    }

    /// Waits until snapshots taken from now on see them. Gives up after
    /// [`VISIBLE_WAIT`] (then the round checks anyway, logged).
    pub async fn wait(&self, pool: &Pool) {
        if self.unseen().is_empty() {
            return;
        }
        let started = Instant::now();
        loop {
            let pending = async {
                let mut conn = pool.checkout().await?;
                let statement = conn.prepare_cached(&not_visible("$1::int8[]")).await?;
                conn.query_one(&statement, &[&self.xids])
                    .await
                    .and_then(|r| r.try_get::<_, i64>(0))
            }
            .await;
            match pending {
                Ok(0) => break,
                Ok(n) => debug!(pending = n, "committed transactions not visible yet: waiting"),
                Err(e) => {
                    warn!(error = %e, "cannot check that the transactions are visible: checking RLS now");
                    break;
                }
            }
            if started.elapsed() > VISIBLE_WAIT {
                warn!("committed transactions still not visible after 2 s: checking RLS now");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.saw();
    }
}
