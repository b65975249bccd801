//! Cluster-wide state that makes each webhook event happen once per cluster, and keeps
//! server-set presence alive and editable from any node.
//!
//! * **Occupancy**: every node announces its own occupancy changes (first member in,
//!   last member out) on the nodes' channel, and its whole state ([`state_wire`]) to a
//!   node it has just heard from and, asking for theirs, after an engine outage. Every
//!   node thus keeps the same [`Occupancy`] table. A topic's **reporter** is the first
//!   node by rendezvous hashing over the nodes that report ([`super::liveness`]: running for
//!   2 s; while none does, every live node); it emits `channel.occupied` when the table
//!   says some node has members and the cluster has not reported it occupied, and
//!   `channel.vacated` in the opposite case, then tells every node what it reported. A
//!   node that takes a topic over (its reporter died, a new node ranks first) therefore
//!   emits only what was not reported yet.
//! * **A dead node's presence**: while webhooks are on, the first two nodes by rank
//!   follow every occupied topic (subscribe to it and hold its presence) even without
//!   members there, so when any node dies, including the reporter itself, the topic's
//!   (new) reporter holds the dead node's entries and reports their `presence.leave`
//!   before a `channel.vacated`. Cost: an occupied topic's messages also reach up to two
//!   nodes without members.
//! * **Server-set presence** ([`super::server_presence`]): records are replicated on
//!   the nodes' channel; when a record's holder dies, the topic's reporter takes it over
//!   with the TTL it had left (members see a join under a new `phx_ref` with, or just
//!   before, the old one's leave; no webhook event, the entry did not go). A node holding
//!   server entries of a topic follows it, so a node whose first member joins later
//!   gets them.
//!
//! Guarantees: an event is emitted at least once. Duplicates are possible only while
//! nodes disagree on who reports: within about a second of a node becoming a reporter,
//! after an engine outage, or when two nodes get a topic's first members within the
//! engine's latency of each other while the reporter is changing. Not covered: events a
//! reporter had queued for its webhook receivers when it died, leaves of a node that died
//! within the engine's latency of its members joining, and two nodes dying within the
//! same 4 s (the follower that would report may be one of them). Events of one topic
//! that different nodes report (a member's own `presence.leave` from its node, the
//! `channel.vacated` from the reporter) may reach a receiver in either order.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::envelope;
use super::occupancy::{self, Occupancy, Report};
use super::state_wire::{self, NodeState, Parts};
use super::{ClusterBroker, SUBSCRIBE_WAIT};
use crate::fanout::TopicKey;
use crate::presence::state::{Diff, ReplicaId};
use crate::webhooks::Webhooks;

/// A topic is followed as one of its reporters.
const FOLLOW_REPORTER: u8 = 1;
/// A topic is followed because this node holds server entries there.
pub(super) const FOLLOW_SERVER: u8 = 2;
/// Nodes that follow an occupied topic as reporters: the reporter, and the one that takes
/// over when it dies.
const FOLLOWERS: usize = 2;

/// What a node keeps of the cluster's state.
#[derive(Default)]
pub(super) struct State {
    occupancy: Occupancy,
    /// Topics followed without (only) local members, and why.
    pub(super) follows: ahash::AHashMap<TopicKey, u8>,
    /// Other nodes' states arriving in parts.
    parts: Parts,
}

impl ClusterBroker {
    /// Reports `channel.*` (once for the cluster) and dead nodes' presence leaves to
    /// `webhooks` (set once, at start).
    pub fn observe(&self, webhooks: Arc<Webhooks>) {
        if self.webhooks.set(webhooks).is_err() {
            warn!("cluster webhooks attached twice; keeping the first");
        }
    }

    /// This node reports: it has run for [`super::liveness::READY_AFTER`] and said so in a
    /// heartbeat.
    pub(super) fn me_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn candidates(&self) -> Vec<u64> {
        crate::sync::lock(&self.nodes, "cluster nodes").candidates(self.origin, self.me_ready())
    }

    /// Sends `what` (for the log) to every node.
    pub(super) fn send_nodes(&self, what: &str, bytes: Option<Bytes>) {
        match bytes {
            Some(bytes) => {
                if !self.engine.publish(self.nodes_channel(), bytes) {
                    warn!(what, "cluster engine queue full: not sent to the other nodes");
                    crate::observability::metrics::cluster_dropped(1);
                }
            }
            None => warn!(what, "too large for a cluster envelope: not sent to the other nodes"),
        }
    }

    /// This node got its first member on `key` (or lost its last).
    pub(super) fn local_occupancy(&self, key: &TopicKey, occupied: bool) {
        // Occupancy serves `channel.*` alone: without webhooks (the same on every node of
        // a cluster) topic churn costs the nodes' channel nothing.
        if self.webhooks.get().is_none() {
            return;
        }
        self.send_nodes("occupancy", state_wire::encode_occupancy(self.origin, key, occupied));
        let candidates = self.candidates();
        let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
        st.occupancy.set(self.origin, key, occupied);
        self.reconcile(&mut st, key, &candidates);
    }

    /// Another node's occupancy change.
    pub(super) fn on_occupancy(&self, origin: u64, key: &TopicKey, occupied: bool) {
        let candidates = self.candidates();
        let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
        st.occupancy.set(origin, key, occupied);
        self.reconcile(&mut st, key, &candidates);
    }

    /// A reporter said what it reported.
    pub(super) fn on_reported(&self, key: &TopicKey, occupied: bool) {
        crate::sync::lock(&self.reporting, "cluster reporting")
            .occupancy
            .set_reported(key, occupied);
    }

    /// A heartbeat said whether its node reports.
    pub(super) fn on_heartbeat(&self, origin: u64, ready: bool) {
        let changed = crate::sync::lock(&self.nodes, "cluster nodes").set_ready(origin, ready);
        if changed {
            self.membership_changed();
        }
    }

    /// A node was heard from for the first time (new, or back after a loss): it gets this
    /// node's state.
    pub(super) fn on_new_node(&self) {
        self.send_state(false);
        self.membership_changed();
    }

    /// The nodes that may report changed: every topic's reporter is decided again.
    pub(super) fn membership_changed(&self) {
        let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
        self.reconcile_all(&mut st);
    }

    fn reconcile_all(&self, st: &mut State) {
        let candidates = self.candidates();
        let mut keys = st.occupancy.keys();
        keys.extend(
            st.follows
                .iter()
                .filter(|(_, why)| **why & FOLLOW_REPORTER != 0)
                .map(|(k, _)| k.clone()),
        );
        for key in keys {
            self.reconcile(st, &key, &candidates);
        }
    }

    /// On `key`'s reporter: emits what the cluster has not reported yet. On its first two
    /// nodes by rank (webhooks on): follows it while it is occupied.
    fn reconcile(&self, st: &mut State, key: &TopicKey, candidates: &[u64]) {
        let ranked = occupancy::ranked(key, candidates, FOLLOWERS);
        if ranked.first() == Some(&self.origin) {
            if let Some(report) = st.occupancy.reconcile(key) {
                let occupied = report == Report::Occupied;
                if let Some(w) = self.webhooks.get() {
                    match report {
                        Report::Occupied => w.occupied(key),
                        Report::Vacated => w.vacated(key),
                    }
                }
                debug!(topic = %key.topic, ?report, "cluster: reported for the cluster");
                self.send_nodes(
                    "channel report",
                    state_wire::encode_reported(self.origin, key, occupied),
                );
            }
        }
        let follow = self.webhooks.get().is_some() && ranked.contains(&self.origin) && st.occupancy.occupied(key);
        self.set_follow(st, key, FOLLOW_REPORTER, follow);
    }

    /// Follows `key` for `why` (or stops): subscribed and holding its presence while any
    /// reason holds, unsubscribed after the delay once none does and no member is here.
    pub(super) fn set_follow(&self, st: &mut State, key: &TopicKey, why: u8, on: bool) {
        let before = st.follows.get(key).copied().unwrap_or(0);
        let after = if on { before | why } else { before & !why };
        if after == before {
            return;
        }
        if after == 0 {
            st.follows.remove(key);
        } else {
            st.follows.insert(key.clone(), after);
        }
        if before == 0 {
            self.start_following(key);
        } else if after == 0 && self.registry.subscriber_count(key) == 0 {
            if let Some(me) = self.this.upgrade() {
                me.schedule_unsubscribe(key);
            }
        }
    }

    /// Whether `key` is followed for a reason other than local members.
    pub(super) fn follows(&self, key: &TopicKey) -> bool {
        crate::sync::lock(&self.reporting, "cluster reporting")
            .follows
            .contains_key(key)
    }

    /// Subscribes to `key` and asks its nodes for their presence.
    fn start_following(&self, key: &TopicKey) {
        let (confirmed, first) = self.want(key);
        if !first || self.presence.get().is_none() {
            return;
        }
        debug!(topic = %key.topic, "cluster: following a topic without members here");
        let broker = self.this.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await;
            if let Some(b) = broker.upgrade() {
                b.send(&key, envelope::encode_sync_request(b.origin, &key, None));
            }
        });
    }

    /// Sends this node's state to the other nodes; `ask`: they answer with theirs.
    pub(super) fn send_state(&self, ask: bool) {
        let topics = crate::sync::lock(&self.reporting, "cluster reporting")
            .occupancy
            .state_of(self.origin);
        let records = self
            .attached()
            .map(|(hub, _)| hub.server_held_by(self.origin))
            .unwrap_or_default();
        for part in state_wire::encode_node_state(self.origin, ask, &topics, &records) {
            self.send_nodes("node state", Some(part));
        }
    }

    /// A part of another node's state.
    pub(super) fn on_node_state(&self, origin: u64, part: NodeState) {
        let whole = crate::sync::lock(&self.reporting, "cluster reporting")
            .parts
            .add(origin, part);
        let state = match whole {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(n) => {
                warn!(
                    node = format_args!("{origin:016x}"),
                    part = n,
                    "cluster: a part of a node's state was lost; waiting for its next state"
                );
                return;
            }
        };
        if let Some((hub, publish)) = self.attached() {
            let keys: Vec<TopicKey> = state.records.iter().map(|(k, _, _)| k.clone()).collect();
            hub.replace_server_of(&publish, origin, state.records);
            self.follow_server_topics(&keys);
        }
        {
            let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
            st.occupancy.replace_node(origin, &state.topics);
            self.reconcile_all(&mut st);
        }
        if state.ask {
            self.send_state(false);
        }
    }

    /// `node` is gone: its presence leaves (reported here for the topics this node
    /// reports, except server entries, which this node takes over when it reports their
    /// topic), and its occupancy goes, which may vacate topics.
    pub(super) fn node_gone(&self, node: u64) {
        let candidates = self.candidates();
        if let Some((hub, publish)) = self.attached() {
            // Adopted before the dead replica is removed, so a topic's members get the new
            // entry and the old one's leave in one diff and never see the key go.
            let dead_records = self.adopt_servers_of(hub, &publish, node, &candidates);
            // An adopted entry did not leave: no webhook for it (matched by its old ref).
            let adopted =
                |key: &TopicKey, phx_ref: &str| dead_records.iter().any(|(k, _, r)| k == key && r.phx_ref == phx_ref);
            for (key, diff) in hub.remove_replica(&publish, ReplicaId(node)) {
                if occupancy::reporter(&key, &candidates) != Some(self.origin) {
                    continue;
                }
                let leaves: Vec<_> = diff
                    .leaves
                    .into_iter()
                    .filter(|(_, meta)| !adopted(&key, &meta.phx_ref))
                    .collect();
                if !leaves.is_empty() {
                    info!(topic = %key.topic, leaves = leaves.len(), "cluster: reporting a dead node's presence leaves");
                    hub.report_leaves(
                        &key,
                        &Diff {
                            joins: Vec::new(),
                            leaves,
                        },
                    );
                }
            }
        }
        let mut st = crate::sync::lock(&self.reporting, "cluster reporting");
        st.parts.forget(node);
        st.occupancy.remove_node(node);
        self.reconcile_all(&mut st);
    }
}
