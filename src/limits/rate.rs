//! Averaged rate counters, as Supabase's (protocol.md §11.1): events are counted into the
//! current bucket; every tick the bucket is closed and the rate becomes the mean per
//! second over the last `buckets` ticks. Limits compare that mean, so a short burst above
//! a limit is tolerated while a sustained rate is not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One averaged counter. Counting is one atomic add; reading the rate one atomic load.
pub struct RateCounter {
    current: AtomicU64,
    closed: Mutex<VecDeque<u64>>,
    /// The last computed mean per second, as f64 bits.
    rate: AtomicU64,
    buckets: usize,
    window_secs: f64,
}

impl RateCounter {
    /// A counter averaging over `buckets` ticks of `tick`.
    pub fn new(tick: Duration, buckets: usize) -> RateCounter {
        let buckets = buckets.max(1);
        RateCounter {
            current: AtomicU64::new(0),
            closed: Mutex::new(VecDeque::with_capacity(buckets)),
            rate: AtomicU64::new(0f64.to_bits()),
            buckets,
            window_secs: (tick.as_secs_f64() * buckets as f64).max(0.001),
        }
    }

    /// Counts `n` events.
    pub fn add(&self, n: u64) {
        self.current.fetch_add(n, Ordering::Relaxed);
    }

    /// Mean events per second over the window, as of the last tick.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// Closes the current bucket and recomputes the rate.
    pub fn tick(&self) {
        let n = self.current.swap(0, Ordering::Relaxed);
        let mut closed = crate::sync::lock(&self.closed, "rate buckets");
        closed.push_back(n);
        while closed.len() > self.buckets {
            closed.pop_front();
        }
        let sum: u64 = closed.iter().sum();
        self.rate
            .store((sum as f64 / self.window_secs).to_bits(), Ordering::Relaxed);
    }
}

/// A per-client sliding window: at most `max` calls within `window`.
#[derive(Debug, Default)]
pub struct CallWindow {
    calls: VecDeque<std::time::Instant>,
}

impl CallWindow {
    /// Records a call now; false when it is over `max` calls within `window`.
    pub fn allow(&mut self, max: usize, window: Duration) -> bool {
        let now = std::time::Instant::now();
        while self.calls.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.calls.pop_front();
        }
        if self.calls.len() >= max {
            return false;
        }
        self.calls.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_averaged_over_the_window() {
        // 12 buckets of 5 s = 60 s: 600 events in one tick is 10/s.
        let c = RateCounter::new(Duration::from_secs(5), 12);
        c.add(600);
        assert_eq!(c.rate(), 0.0, "the rate changes at ticks only");
        c.tick();
        assert_eq!(c.rate(), 10.0);
        for _ in 0..11 {
            c.tick();
        }
        assert_eq!(c.rate(), 10.0, "still inside the window");
        c.tick();
        assert_eq!(c.rate(), 0.0, "out of the window");
    }

    #[test]
    fn call_window_allows_max_then_refuses() {
        let mut w = CallWindow::default();
        for _ in 0..5 {
            assert!(w.allow(5, Duration::from_secs(30)));
        }
        assert!(!w.allow(5, Duration::from_secs(30)));
        let mut w = CallWindow::default();
        assert!(w.allow(1, Duration::ZERO));
        assert!(w.allow(1, Duration::ZERO), "calls older than the window do not count");
    }
}
