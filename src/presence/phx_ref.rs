//! `phx_ref` generation (protocol.md §5.2).
//!
//! Clients only compare refs for equality, but every meta must have a unique one, and a leave
//! must repeat the ref of the meta it removes. We copy Phoenix.PubSub's shape — 8 bytes of
//! nanosecond time followed by 4 bytes that tell nodes apart, URL-safe base64 without padding,
//! so 16 chars like `GHlE8VLvxuKGzQJN` — and make the time part strictly increasing per
//! generator, so refs stay unique even when the caller's clock is coarse or steps back.
//!
//! The time part doubles as the presence ordering stamp ([`ref_time`]): metas under one key are
//! listed oldest first on every replica without shipping a separate timestamp.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Length of a generated ref in chars (12 bytes, base64 without padding).
pub const PHX_REF_LEN: usize = 16;

/// Generates `phx_ref` strings. Share one per process (behind an `Arc` or a `static`): `next`
/// takes `&self` and is lock-free.
#[derive(Debug)]
pub struct PhxRefGen {
    /// The last time stamp handed out; the next one is strictly greater.
    last: AtomicU64,
    /// Random per generator, like Phoenix's `phash2({node, self})`: two servers that stamp the
    /// same nanosecond still make different refs.
    node: u32,
}

impl Default for PhxRefGen {
    fn default() -> Self {
        Self::new()
    }
}

impl PhxRefGen {
    /// A generator with a random node part.
    pub fn new() -> Self {
        Self::with_node(rand::random())
    }

    /// A generator with a chosen node part (tests, or a node id the caller already has).
    pub fn with_node(node: u32) -> Self {
        PhxRefGen {
            last: AtomicU64::new(0),
            node,
        }
    }

    /// A fresh ref stamped `now_nanos` (Unix time in nanoseconds), or one past the previous
    /// stamp when the clock has not moved on. Unique per generator until the stamp reaches
    /// `u64::MAX` (the year 2554).
    pub fn next(&self, now_nanos: u64) -> String {
        let step = |last: u64| now_nanos.max(last.saturating_add(1));
        // A single read-modify-write on one atomic is totally ordered, so Relaxed suffices:
        // no other memory is published through it.
        let stamp = match self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(step(last)))
        {
            Ok(last) | Err(last) => step(last),
        };
        let mut raw = [0u8; 12];
        raw[..8].copy_from_slice(&stamp.to_be_bytes());
        raw[8..].copy_from_slice(&self.node.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }
}

/// The time stamp inside a ref made by [`PhxRefGen`], or `None` for any other string (refs
/// from elsewhere still work; they just sort first within their key).
pub fn ref_time(phx_ref: &str) -> Option<u64> {
    if phx_ref.len() != PHX_REF_LEN {
        return None;
    }
    let mut raw = [0u8; 12];
    match URL_SAFE_NO_PAD.decode_slice(phx_ref, &mut raw) {
        Ok(12) => {}
        _ => return None,
    }
    let mut time = [0u8; 8];
    time.copy_from_slice(&raw[..8]);
    Some(u64::from_be_bytes(time))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn url_safe(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn ten_thousand_refs_are_unique_url_safe_and_16_chars() {
        let refs = PhxRefGen::new();
        let mut seen = HashSet::new();
        for i in 0..10_000u64 {
            // A coarse clock: the same instant 100 times in a row.
            let r = refs.next(1_700_000_000_000_000_000 + i / 100);
            assert_eq!(r.len(), PHX_REF_LEN);
            assert!(url_safe(&r), "{r}");
            assert!(seen.insert(r), "duplicate ref at {i}");
        }
    }

    #[test]
    fn stamps_strictly_increase_even_when_the_clock_steps_back() {
        let refs = PhxRefGen::with_node(7);
        let a = ref_time(&refs.next(1_000)).unwrap();
        let b = ref_time(&refs.next(500)).unwrap();
        let c = ref_time(&refs.next(2_000)).unwrap();
        assert_eq!((a, b, c), (1_000, 1_001, 2_000));
    }

    #[test]
    fn generators_on_different_nodes_differ_at_the_same_instant() {
        let a = PhxRefGen::with_node(1).next(42);
        let b = PhxRefGen::with_node(2).next(42);
        assert_ne!(a, b);
        assert_eq!(ref_time(&a), ref_time(&b));
    }

    #[test]
    fn foreign_refs_have_no_time() {
        assert_eq!(ref_time("GHlE8VLvxuKGzQJN").map(|_| ()), Some(()));
        assert_eq!(ref_time("short"), None);
        assert_eq!(ref_time("not base64 at all"), None);
        assert_eq!(ref_time("!!!!!!!!!!!!!!!!"), None);
        assert_eq!(ref_time("éééééééé"), None);
    }

    #[test]
    fn shared_across_threads_stays_unique() {
        let refs = std::sync::Arc::new(PhxRefGen::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let refs = refs.clone();
                std::thread::spawn(move || (0..2_500).map(|_| refs.next(5)).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for r in h.join().unwrap() {
                assert!(seen.insert(r));
            }
        }
        assert_eq!(seen.len(), 10_000);
    }
}
