//! Which nodes are alive: each node publishes a heartbeat on the cluster's node channel
//! every [`HEARTBEAT`]; a node not heard from for [`NODE_TIMEOUT`] is gone, and its
//! presence leaves every topic on this node (Phoenix Tracker waits 30 s; here a node
//! killed with `kill -9` or cut off the network is gone within about 4.5 s).

use std::time::Duration;

use ahash::AHashMap;
use tokio::time::Instant;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a node counts as gone.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(4000);

/// The other nodes heard from, and when last.
#[derive(Debug, Default)]
pub struct Nodes {
    last_seen: AHashMap<u64, Instant>,
}

impl Nodes {
    /// `node` was heard from now; true when it was not known (new, or back after a loss).
    pub fn heard(&mut self, node: u64, now: Instant) -> bool {
        self.last_seen.insert(node, now).is_none()
    }

    /// Forgets and returns the nodes silent for longer than [`NODE_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let gone: Vec<u64> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > NODE_TIMEOUT)
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
}
