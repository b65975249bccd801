//! Presence state of one topic, as a CRDT in the style of Phoenix.Tracker.
//!
//! Every server node is a replica. A replica only ever changes the entries of its own channels,
//! so the state is a set of independent per-replica logs and no conflict resolution is needed:
//!
//! * Each local change (track, update, untrack) ticks the replica's clock by one. An entry is
//!   tagged `(replica, clock at which it was added)`; a tag never changes meaning, so "same tag"
//!   means "same entry" on every node.
//! * [`TopicPresence::local_delta`] ships the changes in a clock range `(from, to]`, compacted:
//!   `joins` are the entries alive at `to` tagged in `(from, to]`, `leaves` the tags `<= from`
//!   removed in that range. A receiver that knows the replica up to `known` with
//!   `from <= known < to` can apply it exactly (even when ranges overlap); `from > known` means
//!   something was lost, so it asks for a full sync. Applying twice changes nothing.
//! * A full state replaces all that is known from that replica, so it is idempotent too.
//!
//! Metas under one key are listed oldest first by the time inside their `phx_ref`
//! ([`ref_time`]), then by tag, so all replicas render the same `presence_state`.
//!
//! Pure data: no clock, no I/O. The caller makes `phx_ref`s ([`PhxRefGen`]) and moves deltas.

mod meta;
mod render;
mod replica;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use ahash::AHashMap;
use serde_json::{Map, Value};

use self::meta::strip_server_keys;
pub use self::meta::Meta;
use self::render::write_groups;
pub use self::render::Diff;
pub use self::replica::{Delta, FullState, LocalChanges, MergeOutcome, TaggedEntry};
use super::phx_ref::ref_time;
pub use super::phx_ref::PhxRefGen;

/// One server node taking part in presence. Must be unique per process start (a random u64 is
/// fine): a restarted node that reused its id would look like a replica whose clock went back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u64);

/// The channel that owns an entry (a channel id, unique per process).
pub type Owner = u64;

/// How many removals a replica remembers for [`TopicPresence::local_delta`] by default. Older
/// history is answered with a full state, which is always correct, just larger.
pub const DEFAULT_HISTORY: usize = 512;

/// An entry as stored: key, ordering stamp (from `phx_ref`) and meta. The tag is the map key.
#[derive(Debug, Clone)]
struct Entry {
    key: Arc<str>,
    stamp: u64,
    meta: Arc<Meta>,
}

impl Entry {
    fn new(key: Arc<str>, meta: Arc<Meta>) -> Entry {
        let stamp = ref_time(&meta.phx_ref).unwrap_or(0);
        Entry { key, stamp, meta }
    }

    fn tagged(&self, clock: u64) -> TaggedEntry {
        TaggedEntry {
            clock,
            key: self.key.clone(),
            meta: self.meta.clone(),
        }
    }

    fn into_pair(self) -> (String, Arc<Meta>) {
        (self.key.to_string(), self.meta)
    }
}

/// Render order of `presence_state`: by key, then oldest first, ties broken by tag so every
/// replica agrees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    key: Arc<str>,
    stamp: u64,
    replica: ReplicaId,
    clock: u64,
}

/// The entries of one replica, by tag clock; a BTreeMap because deltas work on clock ranges.
type Entries = BTreeMap<u64, Entry>;

/// What this node knows of another replica.
#[derive(Debug, Default)]
struct Remote {
    /// Known up to this clock.
    clock: u64,
    entries: Entries,
}

/// A local removal, remembered so `local_delta` can list it as a leave.
#[derive(Debug, Clone, Copy)]
struct Removal {
    /// Clock of the change that removed the entry.
    at: u64,
    /// The removed entry's tag clock.
    tag: u64,
}

/// Presence of one topic on one node: its own channels' entries plus what it learned from
/// other replicas. Not synchronized; the caller serializes access (one owner or a lock).
#[derive(Debug)]
pub struct TopicPresence {
    replica: ReplicaId,
    /// Ticks once per local change.
    clock: u64,
    /// Each local channel's entry, by tag clock.
    owners: AHashMap<Owner, u64>,
    local: Entries,
    /// Most recent local removals, oldest first, at most `history` of them.
    removals: VecDeque<Removal>,
    history: usize,
    /// Removals at or before this clock were forgotten: deltas can only start here or later.
    history_floor: u64,
    remotes: AHashMap<ReplicaId, Remote>,
    /// Every entry (local and remote) in render order.
    order: BTreeMap<SortKey, Arc<Meta>>,
}

impl TopicPresence {
    /// Empty presence for a topic on `replica`, clock at 0.
    pub fn new(replica: ReplicaId) -> Self {
        Self::starting_at(replica, 0)
    }

    /// Empty presence whose clock starts at `clock`, for a topic that may have existed on this
    /// node before (dropped when empty, created again). Other replicas may know the earlier
    /// incarnation up to some clock; a new one restarting at 0 would have its deltas ignored
    /// as stale. Starting above that (the Unix time in nanoseconds works: a clock ticks once
    /// per change) makes them see a gap and resync from a full state instead.
    pub fn starting_at(replica: ReplicaId, clock: u64) -> Self {
        TopicPresence {
            replica,
            clock,
            owners: AHashMap::new(),
            local: Entries::new(),
            removals: VecDeque::new(),
            history: DEFAULT_HISTORY,
            // Nothing before `clock` can be told as a delta: it belongs to another incarnation.
            history_floor: clock,
            remotes: AHashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Remembers `history` local removals for deltas instead of [`DEFAULT_HISTORY`].
    pub fn with_history(mut self, history: usize) -> Self {
        self.history = history;
        self
    }

    /// This node's replica id.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// This replica's clock: the number of local changes so far.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Up to which clock `replica`'s changes are applied here (`None`: nothing known of it).
    pub fn known_clock(&self, replica: ReplicaId) -> Option<u64> {
        if replica == self.replica {
            return Some(self.clock);
        }
        self.remotes.get(&replica).map(|r| r.clock)
    }

    /// The key and meta `owner` currently tracks.
    pub fn entry(&self, owner: Owner) -> Option<(&str, &Arc<Meta>)> {
        let e = self.local.get(self.owners.get(&owner)?)?;
        Some((&e.key, &e.meta))
    }

    /// Track or update this owner's entry. Same key and same payload as now → `None`. New
    /// entry → one join. Otherwise one diff: the old meta leaves and the new one, whose
    /// `phx_ref_prev` is the old ref, joins. `phx_ref` must be fresh (see [`PhxRefGen`]); its
    /// time orders the meta within its key.
    #[must_use]
    pub fn track(&mut self, owner: Owner, key: &str, mut payload: Map<String, Value>, phx_ref: String) -> Option<Diff> {
        strip_server_keys(&mut payload);
        let old_tag = self.owners.get(&owner).copied();
        if let Some(old) = old_tag.and_then(|tag| self.local.get(&tag)) {
            if &*old.key == key && old.meta.payload == payload {
                return None;
            }
        }
        self.clock += 1;
        let clock = self.clock;
        let mut diff = Diff::default();
        let old = old_tag.and_then(|tag| self.remove_local(tag, clock));
        let prev = old.as_ref().map(|old| old.meta.phx_ref.clone());
        diff.leaves.extend(old.map(Entry::into_pair));
        let entry = Entry::new(key.into(), Arc::new(Meta::build(phx_ref, prev, payload)));
        diff.joins.push((key.to_owned(), entry.meta.clone()));
        index(&mut self.order, self.replica, clock, &entry);
        self.local.insert(clock, entry);
        self.owners.insert(owner, clock);
        Some(diff)
    }

    /// Remove the owner's entry (untrack, leave, socket close). `None` when it had none.
    #[must_use]
    pub fn untrack(&mut self, owner: Owner) -> Option<Diff> {
        let tag = self.owners.remove(&owner)?;
        self.clock += 1;
        let old = self.remove_local(tag, self.clock)?;
        Some(Diff {
            joins: Vec::new(),
            leaves: vec![old.into_pair()],
        })
    }

    fn remove_local(&mut self, tag: u64, at: u64) -> Option<Entry> {
        let entry = self.local.remove(&tag)?;
        unindex(&mut self.order, self.replica, tag, &entry);
        self.removals.push_back(Removal { at, tag });
        if self.removals.len() > self.history {
            if let Some(forgotten) = self.removals.pop_front() {
                self.history_floor = forgotten.at;
            }
        }
        Some(entry)
    }

    /// The `presence_state` payload: `{KEY:{"metas":[...]}}`, `{}` when empty. Keys in byte
    /// order; within a key, oldest meta first, across all replicas.
    pub fn state_json(&self) -> String {
        let size: usize = self.order.iter().map(|(k, m)| k.key.len() + m.json.len() + 16).sum();
        let mut out = String::with_capacity(2 + size);
        write_groups(&mut out, self.order.iter().map(|(k, m)| (&*k.key, &*m.json)));
        out
    }

    /// Is `key` present (from any replica)?
    pub fn has_key(&self, key: &str) -> bool {
        let from = SortKey {
            key: key.into(),
            stamp: 0,
            replica: ReplicaId(0),
            clock: 0,
        };
        self.order.range(from..).next().is_some_and(|(k, _)| &*k.key == key)
    }

    /// Number of distinct presence keys (from all replicas).
    pub fn key_count(&self) -> usize {
        let mut count = 0;
        let mut last: Option<&str> = None;
        for k in self.order.keys() {
            if last != Some(&*k.key) {
                count += 1;
                last = Some(&k.key);
            }
        }
        count
    }

    /// No entries from any replica.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of this replica's own entries.
    pub fn local_len(&self) -> usize {
        self.local.len()
    }

    /// Number of entries (metas) from all replicas.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Local changes after clock `since` for other replicas: a compacted [`Delta`] `(since,
    /// clock]`, or the full local state when `since` is older than the remembered history (or
    /// newer than our clock). Cost is proportional to the changes, not to the topic.
    pub fn local_delta(&self, since: u64) -> LocalChanges {
        if since < self.history_floor || since > self.clock {
            return LocalChanges::Full(self.full_state());
        }
        let joins = self
            .local
            .range((Excluded(since), Unbounded))
            .map(|(clock, e)| e.tagged(*clock))
            .collect();
        let leaves = self
            .removals
            .iter()
            .rev()
            .take_while(|r| r.at > since)
            .filter(|r| r.tag <= since)
            .map(|r| r.tag)
            .collect();
        LocalChanges::Delta(Delta {
            replica: self.replica,
            from: since,
            to: self.clock,
            joins,
            leaves,
        })
    }

    /// All local entries, for a replica that asked for a full sync.
    pub fn full_state(&self) -> FullState {
        FullState {
            replica: self.replica,
            clock: self.clock,
            entries: self.local.iter().map(|(c, e)| e.tagged(*c)).collect(),
        }
    }
}

fn sort_key(replica: ReplicaId, clock: u64, e: &Entry) -> SortKey {
    SortKey {
        key: e.key.clone(),
        stamp: e.stamp,
        replica,
        clock,
    }
}

fn index(order: &mut BTreeMap<SortKey, Arc<Meta>>, replica: ReplicaId, clock: u64, e: &Entry) {
    order.insert(sort_key(replica, clock, e), e.meta.clone());
}

fn unindex(order: &mut BTreeMap<SortKey, Arc<Meta>>, replica: ReplicaId, clock: u64, e: &Entry) {
    order.remove(&sort_key(replica, clock, e));
}
