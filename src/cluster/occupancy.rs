//! Which nodes have members on which topic, cluster-wide, and which node reports a topic's
//! `channel.*` webhooks: pure data, no I/O and no clock (driven by [`super::reporting`]).
//!
//! Every node keeps the same table: its own occupancy changes, the ones other nodes
//! announce, and each node's full set when it is new or the engine came back. A topic's
//! *reporter* is chosen by rendezvous hashing of the topic over the nodes that may report
//! ([`reporter`]); every node computes the same answer from the same live set, without
//! asking anyone. Alongside each topic the table keeps whether the cluster last *reported*
//! it occupied: the reporter emits whenever that flag and the table disagree and tells the
//! others the new flag, so a node that takes a topic over (its reporter died, or a new
//! node became its reporter) knows what was already said and neither repeats nor skips.

use ahash::{AHashMap, AHashSet};

use crate::fanout::TopicKey;

/// A topic as the cluster sees it.
#[derive(Debug, Default, Clone)]
struct Topic {
    /// Nodes with at least one member on it.
    nodes: AHashSet<u64>,
    /// The last `channel.*` event reported was `channel.occupied`.
    reported: bool,
}

/// What the reporter of a topic has to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `channel.occupied`.
    Occupied,
    /// `channel.vacated`.
    Vacated,
}

/// One topic of a node's full state: the node has members there, the cluster reported
/// it occupied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The topic.
    pub key: TopicKey,
    /// The sending node has members on it.
    pub here: bool,
    /// The cluster (as the sender knows) reported it occupied.
    pub reported: bool,
}

/// The cluster's occupancy, as this node knows it.
#[derive(Debug, Default)]
pub struct Occupancy {
    topics: AHashMap<TopicKey, Topic>,
}

impl Occupancy {
    /// `node` has (or no longer has) members on `key`.
    pub fn set(&mut self, node: u64, key: &TopicKey, occupied: bool) {
        if occupied {
            self.topics.entry(key.clone()).or_default().nodes.insert(node);
        } else if let Some(t) = self.topics.get_mut(key) {
            t.nodes.remove(&node);
            self.prune(key);
        }
    }

    /// The reporter said it reported `key` occupied (or vacated).
    pub fn set_reported(&mut self, key: &TopicKey, reported: bool) {
        match self.topics.get_mut(key) {
            Some(t) => {
                t.reported = reported;
                self.prune(key);
            }
            None if reported => {
                self.topics.insert(
                    key.clone(),
                    Topic {
                        nodes: AHashSet::new(),
                        reported,
                    },
                );
            }
            None => {}
        }
    }

    /// Replaces everything known of `node`'s occupancy with its full state. A topic this
    /// node did not know at all takes the sender's `reported` flag (a node that just
    /// started learns what the cluster already said).
    pub fn replace_node(&mut self, node: u64, entries: &[StateEntry]) {
        for t in self.topics.values_mut() {
            t.nodes.remove(&node);
        }
        for e in entries {
            let known = self.topics.contains_key(&e.key);
            let t = self.topics.entry(e.key.clone()).or_default();
            if !known {
                t.reported = e.reported;
            }
            if e.here {
                t.nodes.insert(node);
            }
        }
        self.topics.retain(|_, t| !t.nodes.is_empty() || t.reported);
    }

    /// `node` is gone: it occupies nothing any more.
    pub fn remove_node(&mut self, node: u64) {
        self.topics.retain(|_, t| {
            t.nodes.remove(&node);
            !t.nodes.is_empty() || t.reported
        });
    }

    /// Some node has members on `key`.
    pub fn occupied(&self, key: &TopicKey) -> bool {
        self.topics.get(key).is_some_and(|t| !t.nodes.is_empty())
    }

    /// What the reporter of `key` must emit now (the reported flag is updated).
    pub fn reconcile(&mut self, key: &TopicKey) -> Option<Report> {
        let t = self.topics.get_mut(key)?;
        let occupied = !t.nodes.is_empty();
        if occupied == t.reported {
            return None;
        }
        t.reported = occupied;
        self.prune(key);
        Some(if occupied { Report::Occupied } else { Report::Vacated })
    }

    /// Every topic known.
    pub fn keys(&self) -> Vec<TopicKey> {
        self.topics.keys().cloned().collect()
    }

    /// What `node` tells a new node: the topics it has members on and those reported
    /// occupied.
    pub fn state_of(&self, node: u64) -> Vec<StateEntry> {
        self.topics
            .iter()
            .filter(|(_, t)| t.reported || t.nodes.contains(&node))
            .map(|(key, t)| StateEntry {
                key: key.clone(),
                here: t.nodes.contains(&node),
                reported: t.reported,
            })
            .collect()
    }

    fn prune(&mut self, key: &TopicKey) {
        if self.topics.get(key).is_some_and(|t| t.nodes.is_empty() && !t.reported) {
            self.topics.remove(key);
        }
    }
}

/// The first `n` nodes of `candidates` for `key` by rendezvous (highest random weight)
/// hashing: every node computes the same order from the same set, and removing a node
/// moves only the topics it ranked first for (to the node ranked second).
pub fn ranked(key: &TopicKey, candidates: &[u64], n: usize) -> Vec<u64> {
    let topic = topic_hash(key);
    let mut scored: Vec<(u64, u64)> = candidates.iter().map(|node| (mix(topic ^ mix(*node)), *node)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|s| s.1);
    scored.into_iter().take(n).map(|(_, node)| node).collect()
}

/// The reporter of `key` among `candidates`.
pub fn reporter(key: &TopicKey, candidates: &[u64]) -> Option<u64> {
    ranked(key, candidates, 1).first().copied()
}

/// FNV-1a of the topic and its privacy: stable across processes and builds (the std
/// hasher is not promised to be).
fn topic_hash(key: &TopicKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.topic.as_bytes().iter().chain([&u8::from(key.private)]) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> TopicKey {
        TopicKey::new(t, false)
    }

    #[test]
    fn a_topic_is_reported_once_when_first_occupied_and_once_when_last_vacated() {
        let mut o = Occupancy::default();
        let k = key("realtime:a");
        o.set(1, &k, true);
        assert_eq!(o.reconcile(&k), Some(Report::Occupied));
        o.set(2, &k, true);
        assert_eq!(o.reconcile(&k), None, "a second node is no news");
        o.set(1, &k, false);
        assert_eq!(o.reconcile(&k), None);
        o.set(2, &k, false);
        assert_eq!(o.reconcile(&k), Some(Report::Vacated));
        assert!(o.keys().is_empty(), "a vacated topic is forgotten");
    }

    #[test]
    fn a_dead_node_vacates_what_only_it_occupied_and_a_takeover_repeats_nothing() {
        let mut reporter_view = Occupancy::default();
        let mut other_view = Occupancy::default();
        let (a, b) = (key("realtime:a"), key("realtime:b"));
        for o in [&mut reporter_view, &mut other_view] {
            o.set(1, &a, true);
            o.set(2, &a, true);
            o.set(2, &b, true);
        }
        assert_eq!(reporter_view.reconcile(&a), Some(Report::Occupied));
        assert_eq!(reporter_view.reconcile(&b), Some(Report::Occupied));
        // The reporter told the other node what it reported.
        other_view.set_reported(&a, true);
        other_view.set_reported(&b, true);
        other_view.remove_node(2);
        assert_eq!(other_view.reconcile(&a), None, "still occupied by 1");
        assert_eq!(other_view.reconcile(&b), Some(Report::Vacated));
    }

    #[test]
    fn an_unreported_change_is_emitted_by_whoever_takes_over() {
        // The reporter died before reporting: the flag says so, the next one emits.
        let mut o = Occupancy::default();
        let k = key("realtime:a");
        o.set(3, &k, true);
        assert_eq!(o.reconcile(&k), Some(Report::Occupied));
    }

    #[test]
    fn a_new_node_learns_the_reported_flags_and_a_full_state_replaces_a_nodes_set() {
        let mut old = Occupancy::default();
        let (a, b) = (key("realtime:a"), key("realtime:b"));
        old.set(1, &a, true);
        assert_eq!(old.reconcile(&a), Some(Report::Occupied));
        let mut new = Occupancy::default();
        new.replace_node(1, &old.state_of(1));
        assert!(new.occupied(&a));
        assert_eq!(new.reconcile(&a), None, "already reported by the cluster");
        // Node 1 resends its state after an outage: it left `a` and joined `b` meanwhile.
        let entries = vec![StateEntry {
            key: b.clone(),
            here: true,
            reported: false,
        }];
        new.replace_node(1, &entries);
        assert_eq!(new.reconcile(&a), Some(Report::Vacated));
        assert_eq!(new.reconcile(&b), Some(Report::Occupied));
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_dead_nodes_topics() {
        let nodes = [11u64, 22, 33, 44];
        let topics: Vec<TopicKey> = (0..200).map(|i| key(&format!("realtime:t{i}"))).collect();
        let before: Vec<u64> = topics.iter().filter_map(|k| reporter(k, &nodes)).collect();
        let mut shuffled = nodes;
        shuffled.reverse();
        let again: Vec<u64> = topics.iter().filter_map(|k| reporter(k, &shuffled)).collect();
        assert_eq!(before, again, "order of the candidates does not matter");
        for n in nodes {
            let owned = before.iter().filter(|r| **r == n).count();
            assert!(owned > 20, "node {n} reports {owned} of 200");
        }
        let survivors = [11u64, 33, 44];
        for (k, r) in topics.iter().zip(&before) {
            let now = reporter(k, &survivors);
            if *r == 22 {
                assert_eq!(
                    now,
                    ranked(k, &nodes, 2).get(1).copied(),
                    "the second in rank takes over"
                );
            } else {
                assert_eq!(now, Some(*r), "only the dead node's topics move");
            }
        }
        assert_ne!(reporter(&TopicKey::new("realtime:x", true), &nodes).map(|_| 0), None);
        assert_eq!(reporter(&key("realtime:x"), &[]), None);
    }
}
