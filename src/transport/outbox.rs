//! The per-connection outbound queue, bounded in messages and bytes.
//!
//! Publishers (fan-out, other connections, REST) only ever make a non-blocking
//! [`Outbox::push`]: over the bound the connection is marked for disconnection and the
//! publisher moves on, so a slow consumer never stalls a topic. The connection's own task
//! drains the whole queue per wake-up and writes it in one batch.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use realtime_protocol::WireFrame;
use tokio::sync::Notify;

/// Something for the socket writer.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A protocol message.
    Frame(WireFrame),
    /// Answer to a client ping.
    Pong(Bytes),
    /// Liveness probe.
    Ping,
    /// Close the connection with this code and reason once what is queued before is
    /// written (a limit ends the socket).
    Close(u16, &'static str),
}

/// Why an outbox stopped taking messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The queue bound was crossed: the client reads too slowly.
    SlowConsumer,
    /// The connection is shutting down.
    Gone,
    /// The server ends the connection with this close code and reason.
    Requested(u16, &'static str),
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<Closed>,
}

/// A bounded, non-blocking outbound queue with a single consumer.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Signalled once when the outbox closes, for a writer blocked on a slow socket.
    closed: Notify,
    max_messages: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox; allocates nothing until the first message.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            notify: Notify::new(),
            closed: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues a protocol frame. Returns false when the outbox is closed, or when this push
    /// crossed the bound (the outbox then closes itself as a slow consumer).
    pub fn push(&self, frame: WireFrame) -> bool {
        let len = frame.len();
        self.enqueue(Outgoing::Frame(frame), len, true)
    }

    /// Queues a control frame (pong/ping). Control frames are tiny and are never refused
    /// for size, only when the outbox is closed.
    pub fn push_control(&self, item: Outgoing) -> bool {
        self.enqueue(item, 0, false)
    }

    fn enqueue(&self, item: Outgoing, len: usize, bounded: bool) -> bool {
        let mut q = crate::sync::lock(&self.queue, "outbox");
        if q.closed.is_some() {
            return false;
        }
        if bounded && (q.items.len() >= self.max_messages || q.bytes + len > self.max_bytes) {
            q.closed = Some(Closed::SlowConsumer);
            q.items.clear();
            q.bytes = 0;
            drop(q);
            self.notify.notify_one();
            self.closed.notify_one();
            return false;
        }
        q.items.push_back(item);
        q.bytes += len;
        let first = q.items.len() == 1;
        drop(q);
        // One wake-up per batch: the consumer drains everything queued meanwhile.
        if first {
            self.notify.notify_one();
        }
        true
    }

    /// Stops accepting messages (the connection is ending).
    pub fn close(&self) {
        {
            let mut q = crate::sync::lock(&self.queue, "outbox");
            q.closed.get_or_insert(Closed::Gone);
            q.items.clear();
            q.bytes = 0;
        }
        self.notify.notify_one();
        self.closed.notify_one();
    }

    /// Resolves once the outbox has closed (overflow or shutdown). Cancel safe.
    pub async fn wait_closed(&self) {
        loop {
            if crate::sync::lock(&self.queue, "outbox").closed.is_some() {
                return;
            }
            self.closed.notified().await;
        }
    }

    /// Waits until there is something to drain or the outbox was closed.
    /// Cancel safe: a permit left by `notify_one` is kept for the next call.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Moves everything queued into `out`. Returns the close reason if the outbox closed.
    pub fn drain(&self, out: &mut Vec<Outgoing>) -> Option<Closed> {
        let mut q = crate::sync::lock(&self.queue, "outbox");
        out.extend(q.items.drain(..));
        q.bytes = 0;
        // Give back the ring buffer of a connection that had a burst, so idle
        // connections stay small.
        if q.items.capacity() > 64 {
            q.items.shrink_to(16);
        }
        q.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> WireFrame {
        WireFrame::Text(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn bound_in_messages_closes_as_slow_consumer() {
        let o = Outbox::new(2, 1 << 20);
        assert!(o.push(frame(1)));
        assert!(o.push(frame(1)));
        assert!(!o.push(frame(1)));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(Closed::SlowConsumer));
        assert!(out.is_empty(), "a slow consumer's backlog is dropped, not written");
        assert!(!o.push(frame(1)));
    }

    #[test]
    fn bound_in_bytes() {
        let o = Outbox::new(100, 10);
        assert!(o.push(frame(6)));
        assert!(!o.push(frame(6)));
    }

    #[test]
    fn drain_takes_everything_in_order() {
        let o = Outbox::new(100, 1000);
        for n in 1..=3 {
            assert!(o.push(frame(n)));
        }
        assert!(o.push_control(Outgoing::Ping));
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), None);
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[2], Outgoing::Frame(f) if f.len() == 3));
    }
}
