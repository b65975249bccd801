//! A bounded queue of batches for one receiver. A full queue drops its OLDEST batch (the
//! newest state of the world is worth more than the oldest) and counts it in
//! `/metrics`; pushing never waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// One batch, serialized once: `{"events":[...]}`.
pub type Batch = Bytes;

/// Batches waiting for one receiver.
pub struct Queue {
    batches: Mutex<VecDeque<Batch>>,
    capacity: usize,
    ready: Notify,
}

impl Queue {
    /// A queue of at most `capacity` batches (at least one).
    pub fn new(capacity: usize) -> Arc<Queue> {
        Arc::new(Queue {
            batches: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
        })
    }

    /// Adds a batch; returns true when the oldest had to be dropped for it.
    pub fn push(&self, batch: Batch) -> bool {
        let dropped = {
            let mut q = crate::sync::lock(&self.batches, "webhook queue");
            let dropped = q.len() >= self.capacity && q.pop_front().is_some();
            q.push_back(batch);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The oldest batch, waiting for one.
    pub async fn pop(&self) -> Batch {
        loop {
            if let Some(b) = crate::sync::lock(&self.batches, "webhook queue").pop_front() {
                return b;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_the_oldest_when_full() {
        let q = Queue::new(2);
        assert!(!q.push(Bytes::from_static(b"1")));
        assert!(!q.push(Bytes::from_static(b"2")));
        assert!(q.push(Bytes::from_static(b"3")));
        assert_eq!(q.pop().await, Bytes::from_static(b"2"));
        assert_eq!(q.pop().await, Bytes::from_static(b"3"));
    }
}
