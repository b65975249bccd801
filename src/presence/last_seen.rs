//! When each presence key of a topic last left, for the REST presence API's `last_seen`
//! ("who was here five minutes ago"). Fed by the hub from every diff's leaves (local,
//! server-set and other nodes' alike), so in a cluster every node answers the same.
//!
//! Kept apart from the CRDT because a topic's presence is dropped when it empties, while
//! its last-seen times must outlive it for the whole window. Bounded by time: entries
//! older than the window are pruned when a topic's map doubles and by [`LastSeen::sweep`].

use std::sync::Mutex;

use ahash::{AHashMap, RandomState};

use crate::fanout::TopicKey;

const SHARDS: usize = 64;

#[derive(Default)]
struct Seen {
    /// Key → Unix time in ms of its last leave.
    at: AHashMap<String, u64>,
    /// Size after the last prune; a prune runs again when the map doubles past it.
    pruned_len: usize,
}

/// Last leave time per key and topic, kept for `window_ms`.
pub struct LastSeen {
    shards: Box<[Mutex<AHashMap<TopicKey, Seen>>]>,
    hasher: RandomState,
    window_ms: u64,
}

impl LastSeen {
    /// Remembers leaves for `window_ms` (0 remembers nothing).
    pub fn new(window_ms: u64) -> LastSeen {
        LastSeen {
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            hasher: RandomState::new(),
            window_ms,
        }
    }

    fn shard(&self, key: &TopicKey) -> &Mutex<AHashMap<TopicKey, Seen>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Records that `keys` left `topic` at `now_ms`.
    pub fn left<'a>(&self, topic: &TopicKey, keys: impl Iterator<Item = &'a str>, now_ms: u64) {
        if self.window_ms == 0 {
            return;
        }
        let mut shard = crate::sync::lock(self.shard(topic), "last seen shard");
        let seen = shard.entry(topic.clone()).or_default();
        for key in keys {
            match seen.at.get_mut(key) {
                Some(t) => *t = now_ms,
                None => {
                    seen.at.insert(key.to_owned(), now_ms);
                }
            }
        }
        if seen.at.len() > 2 * seen.pruned_len.max(64) {
            let floor = now_ms.saturating_sub(self.window_ms);
            seen.at.retain(|_, t| *t >= floor);
            seen.pruned_len = seen.at.len();
        }
    }

    /// Keys of `topic` that left within the window, with their time, except those
    /// `online` says are present now.
    pub fn recent(&self, topic: &TopicKey, now_ms: u64, online: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let floor = now_ms.saturating_sub(self.window_ms);
        let shard = crate::sync::lock(self.shard(topic), "last seen shard");
        let Some(seen) = shard.get(topic) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = seen
            .at
            .iter()
            .filter(|(k, t)| **t >= floor && !online(k))
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        out.sort();
        out
    }

    /// Drops everything older than the window (run now and then so quiet topics do not
    /// keep their maps forever).
    pub fn sweep(&self, now_ms: u64) {
        let floor = now_ms.saturating_sub(self.window_ms);
        for shard in self.shards.iter() {
            let mut shard = crate::sync::lock(shard, "last seen shard");
            shard.retain(|_, seen| {
                seen.at.retain(|_, t| *t >= floor);
                seen.pruned_len = seen.at.len();
                !seen.at.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_leaves_within_the_window_and_skips_online_keys() {
        let seen = LastSeen::new(1_000);
        let t = TopicKey::new("realtime:room", false);
        seen.left(&t, ["a", "b"].into_iter(), 10_000);
        seen.left(&t, ["c"].into_iter(), 10_500);
        assert_eq!(
            seen.recent(&t, 10_900, |k| k == "b"),
            vec![("a".to_owned(), 10_000), ("c".to_owned(), 10_500)]
        );
        assert_eq!(seen.recent(&t, 11_200, |_| false), vec![("c".to_owned(), 10_500)]);
        assert!(seen
            .recent(&TopicKey::new("realtime:room", true), 10_900, |_| false)
            .is_empty());
        seen.sweep(11_600);
        assert!(seen.recent(&t, 10_600, |_| false).is_empty(), "swept");
    }
}
