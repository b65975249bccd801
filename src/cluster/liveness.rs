//! Which nodes are alive: each node publishes a heartbeat on the cluster's node channel
//! every [`HEARTBEAT`]; a node not heard from for [`NODE_TIMEOUT`] is gone, and its
//! presence leaves every topic on this node (Phoenix Tracker waits 30 s; here a node
//! killed with `kill -9` or cut off the network is gone within about 4.5 s).
//!
//! A heartbeat also says whether its node *reports* (has run for [`READY_AFTER`], so it
//! has heard every other node and received their state): only reporting nodes are
//! candidates for a topic's reporter (see [`super::reporting`]).

use std::time::Duration;

use ahash::AHashMap;
use tokio::time::Instant;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a node counts as gone.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(4000);
/// How long a node runs before it reports: two heartbeats, by which time every other node
/// has heard it and sent it its state.
pub const READY_AFTER: Duration = Duration::from_millis(2000);

/// Another node: when last heard, and whether its last heartbeat said it reports.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    ready: bool,
}

/// The other nodes heard from, and when last.
#[derive(Debug, Default)]
pub struct Nodes {
    last_seen: AHashMap<u64, Seen>,
}

impl Nodes {
    /// `node` was heard from now; true when it was not known (new, or back after a loss).
    pub fn heard(&mut self, node: u64, now: Instant) -> bool {
        match self.last_seen.get_mut(&node) {
            Some(seen) => {
                seen.at = now;
                false
            }
            None => {
                self.last_seen.insert(node, Seen { at: now, ready: false });
                true
            }
        }
    }

    /// `node`'s heartbeat said whether it reports; true when that changed.
    pub fn set_ready(&mut self, node: u64, ready: bool) -> bool {
        match self.last_seen.get_mut(&node) {
            Some(seen) if seen.ready != ready => {
                seen.ready = ready;
                true
            }
            _ => false,
        }
    }

    /// The nodes that may report, this one (`me`, reporting when `me_ready`) included:
    /// those whose heartbeat says they report or, while none does (the whole cluster is
    /// starting), every node alive.
    pub fn candidates(&self, me: u64, me_ready: bool) -> Vec<u64> {
        let mut ready: Vec<u64> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| seen.ready)
            .map(|(node, _)| *node)
            .collect();
        if me_ready {
            ready.push(me);
        }
        if ready.is_empty() {
            ready = self.last_seen.keys().copied().chain([me]).collect();
        }
        ready
    }

    /// Forgets and returns the nodes silent for longer than [`NODE_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let gone: Vec<u64> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.at) > NODE_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        for node in &gone {
            self.last_seen.remove(node);
        }
        gone
    }

    /// Number of other nodes alive.
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// No other node is alive.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_expires_once_and_a_returning_one_is_new_again() {
        let t0 = Instant::now();
        let mut nodes = Nodes::default();
        assert!(nodes.heard(1, t0));
        assert!(!nodes.heard(1, t0 + HEARTBEAT));
        assert!(nodes.heard(2, t0));
        assert_eq!(nodes.expire(t0 + NODE_TIMEOUT), Vec::<u64>::new());
        let mut gone = nodes.expire(t0 + NODE_TIMEOUT + Duration::from_millis(1));
        gone.sort_unstable();
        assert_eq!(gone, [2], "1 was heard later");
        assert_eq!(nodes.len(), 1);
        assert!(
            nodes.heard(2, t0 + NODE_TIMEOUT * 2),
            "a node back after expiring is new"
        );
    }

    #[test]
    fn candidates_are_the_reporting_nodes_or_every_node_while_none_reports() {
        let t0 = Instant::now();
        let mut nodes = Nodes::default();
        nodes.heard(1, t0);
        nodes.heard(2, t0);
        let mut all = nodes.candidates(9, false);
        all.sort_unstable();
        assert_eq!(all, [1, 2, 9], "nobody reports yet: everybody");
        assert!(nodes.set_ready(2, true));
        assert!(!nodes.set_ready(2, true), "no change");
        assert!(!nodes.set_ready(7, true), "an unknown node is not made up");
        assert_eq!(nodes.candidates(9, false), [2]);
        let mut two = nodes.candidates(9, true);
        two.sort_unstable();
        assert_eq!(two, [2, 9]);
    }
}
