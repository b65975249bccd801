//! Delivery rounds may overlap (the replication driver keeps a few batches in flight, so
//! one round's RLS check runs while the next reads its security state), but their frames
//! must leave in commit order. Each round takes a turn when it starts, in batch order,
//! and pushes only once every earlier round has pushed or given up.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::watch;

/// The order of the rounds.
pub struct Turns {
    state: Mutex<State>,
    /// Every turn before this one is over.
    over: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Turns over before some earlier one.
    early: BTreeSet<u64>,
    over_before: u64,
}

impl Default for Turns {
    fn default() -> Turns {
        Turns {
            state: Mutex::new(State::default()),
            over: watch::Sender::new(0),
        }
    }
}

impl Turns {
    /// The next round's turn; it is over when dropped.
    pub fn take(&self) -> Turn<'_> {
        let mut state = crate::sync::lock(&self.state, "delivery turns");
        let n = state.next;
        state.next += 1;
        Turn { turns: self, n }
    }

    fn end(&self, n: u64) {
        let mut state = crate::sync::lock(&self.state, "delivery turns");
        state.early.insert(n);
        let before = state.over_before;
        let mut over = before;
        while state.early.remove(&over) {
            over += 1;
        }
        state.over_before = over;
        drop(state);
        if over != before {
            self.over.send_replace(over);
        }
    }
}

/// A round's place in the order.
pub struct Turn<'a> {
    turns: &'a Turns,
    n: u64,
}

impl Turn<'_> {
    /// Completes once every earlier round is over.
    pub async fn wait(&self) {
        let mut over = self.turns.over.subscribe();
        // The sender lives as long as `Turns`, which outlives this turn.
        let _ = over.wait_for(|&before| before >= self.n).await;
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.end(self.n);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn ready(turn: &Turn<'_>) -> bool {
        tokio::time::timeout(Duration::from_millis(20), turn.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_turn_waits_for_every_earlier_one() {
        let turns = Turns::default();
        let first = turns.take();
        let second = turns.take();
        let third = turns.take();
        assert!(ready(&first).await);
        assert!(!ready(&third).await);
        // The second gives up early: the third still waits for the first.
        drop(second);
        assert!(!ready(&third).await);
        drop(first);
        assert!(ready(&third).await);
        drop(third);
        assert!(ready(&turns.take()).await);
    }
}
