//! Connections that are still plain HTTP: accepted, but not (yet) upgraded to a
//! WebSocket. They cost a file descriptor each and do not count toward
//! `MAX_CONCURRENT_USERS`, so an anonymous client could otherwise hold every descriptor
//! with sockets that send nothing or half a request header.
//!
//! They are capped: when the cap is reached, the oldest pending connection is closed to
//! make room for the new one. A real request (a health check, an upgrade) completes in
//! milliseconds, so under a flood of stalled sockets it still gets through, while the
//! stalled ones are the ones that get evicted. Hyper's header read timeout closes stalled
//! connections on its own when there is no flood.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The set of pending connections, oldest first.
pub struct Pending {
    cap: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u64,
    /// When each was accepted; dropping a sender evicts its connection (its receiver
    /// resolves).
    open: BTreeMap<u64, (Instant, oneshot::Sender<()>)>,
}

/// One pending connection; leaves the set when dropped.
pub struct Ticket {
    id: u64,
    pending: Arc<Pending>,
    /// Resolves when the connection is evicted to make room for a newer one.
    pub evicted: oneshot::Receiver<()>,
}

impl Pending {
    /// At most `cap` pending connections (at least one).
    pub fn new(cap: usize) -> Arc<Pending> {
        Arc::new(Pending {
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                next_id: 0,
                open: BTreeMap::new(),
            }),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new connection; evicts the oldest ones while the set is over the cap.
    /// Returns the ticket and how many were evicted.
    pub fn admit(self: &Arc<Self>) -> (Ticket, usize) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let mut evicted = 0;
        while inner.open.len() >= self.cap && inner.open.pop_first().is_some() {
            evicted += 1;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, (Instant::now(), tx));
        drop(inner);
        let ticket = Ticket {
            id,
            pending: self.clone(),
            evicted: rx,
        };
        (ticket, evicted)
    }

    /// Closes the oldest pending connection if it has been pending for at least `min_age`
    /// (to free a descriptor); whether one was closed.
    ///
    /// The age matters because `accept` reports running out of descriptors before it looks
    /// at the queue: the failure does not mean a client is waiting, and the newest pending
    /// connection is usually a real request the server has not read yet.
    pub fn evict_oldest_older_than(&self, min_age: Duration) -> bool {
        self.evict_oldest_accepted_before(Instant::now().checked_sub(min_age))
    }

    fn evict_oldest_accepted_before(&self, cutoff: Option<Instant>) -> bool {
        let Some(cutoff) = cutoff else { return false };
        let mut inner = self.lock();
        match inner.open.first_key_value() {
            Some((_, (accepted, _))) if *accepted <= cutoff => inner.open.pop_first().is_some(),
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner, "pending connections")
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_evicted_at_the_cap_and_tickets_leave_when_dropped() {
        let p = Pending::new(2);
        let (mut a, e) = p.admit();
        assert_eq!(e, 0);
        let (mut b, _) = p.admit();
        let (mut c, e) = p.admit();
        assert_eq!(e, 1);
        assert!(a
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert_eq!(b.evicted.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert_eq!(p.len(), 2);
        drop(b);
        assert_eq!(p.len(), 1);
        assert!(p.evict_oldest_older_than(Duration::ZERO));
        assert!(c
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(!p.evict_oldest_older_than(Duration::ZERO));
        drop((a, c));
        assert!(p.is_empty());
    }

    /// A connection accepted just now is a request in flight, not a stalled socket: running
    /// out of descriptors must not close it (it did, and the client saw a reset).
    #[test]
    fn a_fresh_connection_is_not_evicted_for_descriptors() {
        let p = Pending::new(4);
        let (mut fresh, _) = p.admit();
        assert!(!p.evict_oldest_older_than(Duration::from_secs(1)));
        assert_eq!(fresh.evicted.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        let accepted = p.lock().open.first_key_value().map(|(_, (at, _))| *at);
        assert!(p.evict_oldest_accepted_before(accepted));
        assert!(fresh
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
    }
}
