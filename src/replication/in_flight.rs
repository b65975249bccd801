//! The batches a sink is handling, oldest first. Their futures are polled in order (so
//! each starts after the one before it, as the sink's own ordering expects) and finish
//! in any order; a batch counts as handled, and may be acknowledged, only once every
//! batch before it has too.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use super::batch::Completed;

/// A sink's future for one batch.
pub type Round = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One batch: its future until it finishes, and what it completes.
struct Entry {
    round: Option<Round>,
    completed: Option<Completed>,
}

#[derive(Default)]
pub struct InFlight {
    entries: VecDeque<Entry>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the newest batch: `round` handles it, `completed` is what it lets acknowledge.
    pub fn push(&mut self, round: Round, completed: Option<Completed>) {
        self.entries.push_back(Entry {
            round: Some(round),
            completed,
        });
    }

    /// Waits until the oldest batch is handled, then removes it and every handled batch
    /// after it; answers the last transaction they complete. Pending forever when empty.
    pub async fn next(&mut self) -> Option<Completed> {
        poll_fn(|cx| {
            for entry in &mut self.entries {
                if let Some(round) = entry.round.as_mut() {
                    if round.as_mut().poll(cx).is_ready() {
                        entry.round = None;
                    }
                }
            }
            if self.entries.front().is_none_or(|e| e.round.is_some()) {
                return Poll::Pending;
            }
            let mut last = None;
            while self.entries.front().is_some_and(|e| e.round.is_none()) {
                if let Some(done) = self.entries.pop_front().and_then(|e| e.completed) {
                    last = Some(done);
                }
            }
            Poll::Ready(last)
        })
        .await
    }

    /// Lets every batch finish; answers the last transaction they complete.
    pub async fn drain(&mut self) -> Option<Completed> {
        let mut last = None;
        while !self.is_empty() {
            if let Some(done) = self.next().await {
                last = Some(done);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use realtime_wal::Lsn;
    use tokio::sync::oneshot;

    use super::*;

    fn done(lsn: u64) -> Option<Completed> {
        Some(Completed {
            end_lsn: Lsn(lsn),
            commit_time_us: 0,
        })
    }

    /// A round that records when it starts and finishes when `go` fires.
    fn round(log: &Arc<Mutex<Vec<&'static str>>>, name: &'static str, go: oneshot::Receiver<()>) -> Round {
        let log = log.clone();
        Box::pin(async move {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            let _ = go.await;
        })
    }

    #[tokio::test]
    async fn batches_start_in_order_and_are_acknowledged_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut in_flight = InFlight::default();
        let (go1, wait1) = oneshot::channel();
        let (go2, wait2) = oneshot::channel();
        in_flight.push(round(&log, "first", wait1), done(10));
        in_flight.push(round(&log, "second", wait2), done(20));
        // The second finishes first: nothing is handled until the first has.
        let _ = go2.send(());
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), in_flight.next()).await;
        assert!(early.is_err(), "acknowledged past an unfinished batch");
        assert_eq!(*log.lock().unwrap_or_else(|e| e.into_inner()), ["first", "second"]);
        assert_eq!(in_flight.len(), 2);
        let _ = go1.send(());
        // Both are handled at once: the later position is the one to acknowledge.
        assert_eq!(in_flight.next().await, done(20));
        assert!(in_flight.is_empty());
    }

    #[tokio::test]
    async fn a_batch_completing_no_transaction_keeps_the_last_position() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut in_flight = InFlight::default();
        let (go1, wait1) = oneshot::channel();
        let (go2, wait2) = oneshot::channel();
        in_flight.push(round(&log, "first", wait1), done(10));
        in_flight.push(round(&log, "part of a transaction", wait2), None);
        let _ = go1.send(());
        let _ = go2.send(());
        assert_eq!(in_flight.drain().await, done(10));
    }
}
