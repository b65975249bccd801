//! Server-set presence as cluster state (see [`crate::presence::server`]): records are
//! replicated on the nodes' channel, the holder of a topic's entries stays subscribed to it
//! (so a node whose first member joins later gets them), and a dead holder's entries are
//! taken over by each topic's reporter with the TTL they had left.

use tracing::info;

use super::occupancy;
use super::reporting::FOLLOW_SERVER;
use super::state_wire;
use super::ClusterBroker;
use crate::fanout::TopicKey;
use crate::presence::server::Record;
use crate::presence::PresenceHub;
use crate::publish::Publisher;

impl ClusterBroker {
    /// Another node changed a server-set record (`None`: removed it).
    pub(super) fn on_server(&self, key: &TopicKey, presence_key: &str, record: Option<Record>) {
        if let Some((hub, publish)) = self.attached() {
            hub.apply_server(&publish, key, presence_key, record);
            self.follow_server_topics(std::slice::from_ref(key));
        }
    }

    /// Follows (or stops following) each of `keys` as it holds server entries there.
    pub(super) fn follow_server_topics(&self, keys: &[TopicKey]) {
        let Some((hub, _)) = self.attached() else {
            return;
        };
        let holds: Vec<(TopicKey, bool)> = keys.iter().map(|k| (k.clone(), hub.holds_server(k))).collect();
        let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
        for (key, on) in holds {
            self.set_follow(&mut st, &key, FOLLOW_SERVER, on);
        }
    }

    /// Stops following the topics where this node no longer holds server entries (they
    /// expired or were deleted). Called every heartbeat.
    pub(super) fn tidy_server_follows(&self) {
        let keys: Vec<TopicKey> = crate::sync::lock(&self.reporting, "cluster reporting")
            .follows
            .iter()
            .filter(|(_, why)| **why & FOLLOW_SERVER != 0)
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.follow_server_topics(&keys);
        }
    }

    /// A server-set record changed on this node: the other nodes are told. Called under
    /// the presence hub's server lock, so it does not call the hub.
    pub(super) fn server_changed(&self, key: &TopicKey, presence_key: &str, record: Option<&Record>) {
        self.send_nodes(
            "server presence",
            state_wire::encode_server(self.origin, key, presence_key, record),
        );
        if record.is_some_and(|r| r.holder == self.origin) {
            let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
            self.set_follow(&mut st, key, FOLLOW_SERVER, true);
        }
    }

    /// The dead `node`'s server entries go to each topic's reporter among `candidates`
    /// (this node adopts its own share and tells the others); returns them as they were.
    pub(super) fn adopt_servers_of(
        &self,
        hub: &PresenceHub,
        publish: &Publisher,
        node: u64,
        candidates: &[u64],
    ) -> Vec<(TopicKey, String, Record)> {
        let dead_records = hub.server_held_by(node);
        for (key, presence_key, _) in &dead_records {
            let Some(new_holder) = occupancy::reporter(key, candidates) else {
                continue;
            };
            if let Some(record) = hub.adopt_server(publish, key, presence_key, node, new_holder) {
                info!(topic = %key.topic, key = %presence_key, "cluster: took over a dead node's server presence");
                self.server_changed(key, presence_key, Some(&record));
            }
        }
        dead_records
    }
}
