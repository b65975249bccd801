//! Replication between nodes: the deltas and full states one replica ships, and how
//! another merges them (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use super::{index, unindex, Diff, Entry, Meta, Remote, ReplicaId, SortKey, TopicPresence};

/// One entry as replicated: its tag's clock on the owning replica, its key and its meta.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedEntry {
    /// The owning replica's clock when it added this entry (the entry's tag).
    pub clock: u64,
    /// Presence key.
    pub key: Arc<str>,
    /// The meta as shown to clients.
    pub meta: Arc<Meta>,
}

/// The changes of one replica in the clock range `(from, to]`, compacted (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Whose changes these are.
    pub replica: ReplicaId,
    /// The receiver must know the replica at least up to here.
    pub from: u64,
    /// After applying, the receiver knows the replica up to here. Ship the delta even when
    /// `joins` and `leaves` are empty but `from < to`: the receiver must still move on.
    pub to: u64,
    /// Entries alive at `to` whose tag is in `(from, to]`.
    pub joins: Vec<TaggedEntry>,
    /// Tags `<= from` removed in `(from, to]`.
    pub leaves: Vec<u64>,
}

/// Everything one replica holds for the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct FullState {
    /// Whose entries these are.
    pub replica: ReplicaId,
    /// That replica's clock when the state was taken.
    pub clock: u64,
    /// All its entries, oldest tag first.
    pub entries: Vec<TaggedEntry>,
}

/// What [`TopicPresence::local_delta`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalChanges {
    /// The changes since the requested clock.
    Delta(Delta),
    /// The history needed is gone (or the request was from the future): the whole state.
    Full(FullState),
}

/// Result of [`TopicPresence::merge_delta`].
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a diff must be broadcast and a sync request sent"]
pub enum MergeOutcome {
    /// Applied; broadcast the diff to local subscribers unless it is empty.
    Applied(Diff),
    /// Nothing new: a duplicate, already covered by what we know, or our own delta echoed back.
    Stale,
    /// A delta was lost (or this one is malformed): nothing was applied. Ask that replica for
    /// `local_delta(known_clock(replica).unwrap_or(0))` or its full state and merge the answer.
    NeedFullSync(ReplicaId),
}

impl TopicPresence {
    /// Applies what another replica's [`local_delta`](Self::local_delta) produced.
    pub fn merge(&mut self, changes: LocalChanges) -> MergeOutcome {
        match changes {
            LocalChanges::Delta(delta) => self.merge_delta(delta),
            LocalChanges::Full(full) => MergeOutcome::Applied(self.merge_full(full.replica, full.clock, full.entries)),
        }
    }

    /// Applies a delta from another replica (see [`MergeOutcome`]). Leaves with tags after
    /// `from` are ignored: entries in that range are defined by `joins` alone.
    pub fn merge_delta(&mut self, delta: Delta) -> MergeOutcome {
        let Delta {
            replica,
            from,
            to,
            mut joins,
            leaves,
        } = delta;
        if replica == self.replica {
            return MergeOutcome::Stale;
        }
        joins.sort_unstable_by_key(|j| j.clock);
        let well_formed = from <= to
            && joins.iter().all(|j| j.clock > from && j.clock <= to)
            && joins.windows(2).all(|w| w[0].clock < w[1].clock);
        if !well_formed {
            return MergeOutcome::NeedFullSync(replica);
        }
        let known = self.remotes.get(&replica).map_or(0, |r| r.clock);
        if to <= known {
            return MergeOutcome::Stale;
        }
        if from > known {
            return MergeOutcome::NeedFullSync(replica);
        }
        let remote = self.remotes.entry(replica).or_default();
        let mut diff = Diff::default();
        for tag in leaves.into_iter().filter(|tag| *tag <= from) {
            drop_remote(&mut self.order, remote, replica, tag, &mut diff);
        }
        // Ranges overlap when `from < known`: what we hold after `from` is restated by `joins`,
        // so whatever they no longer list was removed before `to`.
        let gone: Vec<u64> = remote
            .entries
            .range((Excluded(from), Unbounded))
            .map(|(clock, _)| *clock)
            .filter(|clock| joins.binary_search_by_key(clock, |j| j.clock).is_err())
            .collect();
        for tag in gone {
            drop_remote(&mut self.order, remote, replica, tag, &mut diff);
        }
        for j in joins {
            add_remote(&mut self.order, remote, replica, j, &mut diff);
        }
        remote.clock = to;
        MergeOutcome::Applied(diff)
    }

    /// Replaces everything known from `replica` with its full state taken at `clock`; returns
    /// the diff to show locally. A state older than what we know is ignored (empty diff), so a
    /// late answer cannot undo newer deltas. Entries tagged after `clock` are ignored.
    pub fn merge_full(&mut self, replica: ReplicaId, clock: u64, entries: Vec<TaggedEntry>) -> Diff {
        let mut diff = Diff::default();
        if replica == self.replica || self.remotes.get(&replica).is_some_and(|r| clock < r.clock) {
            return diff;
        }
        let incoming: BTreeMap<u64, TaggedEntry> = entries
            .into_iter()
            .filter(|e| (1..=clock).contains(&e.clock))
            .map(|e| (e.clock, e))
            .collect();
        let remote = self.remotes.entry(replica).or_default();
        let gone: Vec<u64> = remote
            .entries
            .keys()
            .filter(|tag| !incoming.contains_key(tag))
            .copied()
            .collect();
        for tag in gone {
            drop_remote(&mut self.order, remote, replica, tag, &mut diff);
        }
        for j in incoming.into_values() {
            add_remote(&mut self.order, remote, replica, j, &mut diff);
        }
        remote.clock = clock;
        diff
    }

    /// A replica went away (node down, TTL expired): drops all its entries and returns their
    /// leaves. Our own id is ignored. If it comes back, its next delta asks for a full sync.
    pub fn remove_replica(&mut self, replica: ReplicaId) -> Diff {
        let mut diff = Diff::default();
        if let Some(remote) = self.remotes.remove(&replica) {
            for (tag, e) in remote.entries {
                unindex(&mut self.order, replica, tag, &e);
                diff.leaves.push(e.into_pair());
            }
        }
        diff
    }
}

fn drop_remote(
    order: &mut BTreeMap<SortKey, Arc<Meta>>,
    remote: &mut Remote,
    replica: ReplicaId,
    tag: u64,
    diff: &mut Diff,
) {
    if let Some(e) = remote.entries.remove(&tag) {
        unindex(order, replica, tag, &e);
        diff.leaves.push(e.into_pair());
    }
}

/// Adds a replicated entry unless its tag is already held (a tag always names the same entry).
fn add_remote(
    order: &mut BTreeMap<SortKey, Arc<Meta>>,
    remote: &mut Remote,
    replica: ReplicaId,
    j: TaggedEntry,
    diff: &mut Diff,
) {
    if remote.entries.contains_key(&j.clock) {
        return;
    }
    let entry = Entry::new(j.key, j.meta);
    index(order, replica, j.clock, &entry);
    diff.joins.push((entry.key.to_string(), entry.meta.clone()));
    remote.entries.insert(j.clock, entry);
}
