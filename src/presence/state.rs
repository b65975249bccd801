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

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use ahash::AHashMap;
use serde_json::{Map, Value};

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

/// Keys the server sets in a meta; the client's own copies are dropped so `json` never holds
/// the same key twice and a client cannot forge refs.
const SERVER_KEYS: [&str; 2] = ["phx_ref", "phx_ref_prev"];

/// One presence meta as it goes on the wire: the payload map + `phx_ref` (+ `phx_ref_prev`).
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// Unique ref of this meta; a leave repeats it.
    pub phx_ref: String,
    /// The ref this meta replaced, when it came from an update.
    pub phx_ref_prev: Option<String>,
    /// The client's track payload without `phx_ref`/`phx_ref_prev`.
    pub payload: Map<String, Value>,
    /// The whole meta as a JSON object, serialized once here so every `presence_state` and
    /// `presence_diff` splices it instead of re-serializing the payload.
    pub json: Arc<str>,
}

impl Meta {
    /// Builds a meta; `payload`'s own `phx_ref`/`phx_ref_prev` keys are dropped (ours win).
    pub fn new(phx_ref: String, phx_ref_prev: Option<String>, mut payload: Map<String, Value>) -> Meta {
        strip_server_keys(&mut payload);
        Self::build(phx_ref, phx_ref_prev, payload)
    }

    /// Parses a meta back from its `json` (for replication transports): `None` unless it is an
    /// object with a string `phx_ref`.
    pub fn from_json(json: &str) -> Option<Meta> {
        let Ok(Value::Object(mut payload)) = serde_json::from_str(json) else {
            return None;
        };
        let Some(Value::String(phx_ref)) = payload.remove("phx_ref") else {
            return None;
        };
        let phx_ref_prev = match payload.remove("phx_ref_prev") {
            Some(Value::String(prev)) => Some(prev),
            _ => None,
        };
        Some(Self::build(phx_ref, phx_ref_prev, payload))
    }

    /// `payload` must already be stripped of server keys.
    fn build(phx_ref: String, phx_ref_prev: Option<String>, payload: Map<String, Value>) -> Meta {
        let mut obj = Map::new();
        obj.insert("phx_ref".to_owned(), Value::String(phx_ref.clone()));
        if let Some(prev) = &phx_ref_prev {
            obj.insert("phx_ref_prev".to_owned(), Value::String(prev.clone()));
        }
        obj.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Display of a Value writes into a String, which cannot fail.
        let json = Value::Object(obj).to_string().into();
        Meta {
            phx_ref,
            phx_ref_prev,
            payload,
            json,
        }
    }
}

fn strip_server_keys(payload: &mut Map<String, Value>) {
    for key in SERVER_KEYS {
        payload.remove(key);
    }
}

/// A change to broadcast to every subscriber of the topic as `presence_diff`.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "subscribers must see every presence diff"]
pub struct Diff {
    /// `(key, meta)` that appeared.
    pub joins: Vec<(String, Arc<Meta>)>,
    /// `(key, meta)` that went away; the meta is the one sent when it joined.
    pub leaves: Vec<(String, Arc<Meta>)>,
}

impl Diff {
    /// `{"joins":{KEY:{"metas":[META,...]}},"leaves":{...}}`. Both keys are always present
    /// (the Python client requires them); metas are grouped by key in diff order.
    pub fn to_json(&self) -> String {
        let size =
            |side: &[(String, Arc<Meta>)]| -> usize { side.iter().map(|(k, m)| k.len() + m.json.len() + 16).sum() };
        let mut out = String::with_capacity(24 + size(&self.joins) + size(&self.leaves));
        out.push_str("{\"joins\":");
        write_side(&mut out, &self.joins);
        out.push_str(",\"leaves\":");
        write_side(&mut out, &self.leaves);
        out.push('}');
        out
    }

    /// True when there is nothing to broadcast.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Appends a later diff, so that applying `self` once equals applying both in order.
    /// A meta that joined in `self` and leaves in `later` was never sent: it is dropped
    /// from both sides instead of being sent as a join and a leave.
    pub fn absorb(&mut self, later: Diff) {
        for (key, meta) in later.leaves {
            match self
                .joins
                .iter()
                .position(|(k, m)| *k == key && m.phx_ref == meta.phx_ref)
            {
                Some(i) => {
                    self.joins.remove(i);
                }
                None => self.leaves.push((key, meta)),
            }
        }
        self.joins.extend(later.joins);
    }
}

fn write_side(out: &mut String, side: &[(String, Arc<Meta>)]) {
    let mut items: Vec<(&str, &str)> = side.iter().map(|(k, m)| (k.as_str(), &*m.json)).collect();
    // A stable sort makes equal keys adjacent while keeping each key's metas in diff order.
    items.sort_by(|a, b| a.0.cmp(b.0));
    write_groups(out, items.into_iter());
}

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

    /// No entries from any replica.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
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

/// Writes `{KEY:{"metas":[META,...]},...}` from `(key, meta json)` pairs whose equal keys are
/// adjacent.
fn write_groups<'a>(out: &mut String, items: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    let mut current: Option<&str> = None;
    for (key, json) in items {
        if current == Some(key) {
            out.push(',');
        } else {
            if current.is_some() {
                out.push_str("]},");
            }
            push_json_string(out, key);
            out.push_str(":{\"metas\":[");
            current = Some(key);
        }
        out.push_str(json);
    }
    if current.is_some() {
        out.push_str("]}");
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal, escaped like serde_json does. Written by hand because
/// it cannot fail and needs no temporary buffer.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Writing into a String cannot fail.
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::collections::{BTreeSet, HashSet};

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// `(key, phx_ref)` of every meta in a `presence_state` payload.
    fn refs_in(state: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (key, group) in parse(state).as_object().unwrap() {
            for meta in group["metas"].as_array().unwrap() {
                out.insert((key.clone(), meta["phx_ref"].as_str().unwrap().to_owned()));
            }
        }
        out
    }

    /// What a client sees after applying diffs the way phoenix.js `syncDiff` does.
    #[derive(Default)]
    struct ClientView(BTreeSet<(String, String)>);

    impl ClientView {
        fn apply(&mut self, diff: &Diff) {
            // Round-trip through the wire format, as a client would.
            let v = parse(&diff.to_json());
            for (side, join) in [("joins", true), ("leaves", false)] {
                for (key, group) in v[side].as_object().unwrap() {
                    for meta in group["metas"].as_array().unwrap() {
                        let r = (key.clone(), meta["phx_ref"].as_str().unwrap().to_owned());
                        if join {
                            self.0.insert(r);
                        } else {
                            assert!(self.0.remove(&r), "leave of unknown meta {r:?}");
                        }
                    }
                }
            }
        }
    }

    /// Merged diffs (`absorb`) leave a client exactly where the diffs one by one would,
    /// for random changes cut into random runs; a meta both joining and leaving within a
    /// run is never sent.
    #[test]
    fn absorbed_diffs_apply_like_the_sequence_they_replace() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut p = TopicPresence::new(A);
            let mut one_by_one = ClientView::default();
            let mut merged_view = ClientView::default();
            let mut run = Diff::default();
            for step in 0..60 {
                let owner = rng.random_range(0..6u64);
                let diff = if rng.random_bool(0.3) {
                    p.untrack(owner)
                } else {
                    let payload = obj(json!({"v": rng.random_range(0..3)}));
                    p.track(owner, &format!("k{}", owner % 3), payload, format!("R{step}"))
                };
                if let Some(d) = diff {
                    one_by_one.apply(&d);
                    run.absorb(d);
                }
                if rng.random_bool(0.25) {
                    let sent = std::mem::take(&mut run);
                    let joined: HashSet<&str> = sent.joins.iter().map(|(_, m)| &*m.phx_ref).collect();
                    assert!(sent.leaves.iter().all(|(_, m)| !joined.contains(&*m.phx_ref)));
                    merged_view.apply(&sent);
                    assert_eq!(merged_view.0, one_by_one.0);
                }
            }
            merged_view.apply(&run);
            assert_eq!(merged_view.0, one_by_one.0);
            assert_eq!(merged_view.0, refs_in(&p.state_json()));
        }
    }

    #[test]
    fn track_new_entry_joins_with_its_phx_ref() {
        let mut p = TopicPresence::new(A);
        let d = p
            .track(1, "user-1", obj(json!({"online_at": 1})), "REF1".into())
            .unwrap();
        assert!(d.leaves.is_empty());
        assert_eq!(d.joins.len(), 1);
        assert_eq!(d.joins[0].0, "user-1");
        assert_eq!(d.joins[0].1.phx_ref, "REF1");
        assert_eq!(d.joins[0].1.phx_ref_prev, None);
        assert_eq!(
            parse(&d.to_json()),
            json!({"joins": {"user-1": {"metas": [{"phx_ref": "REF1", "online_at": 1}]}}, "leaves": {}})
        );
        assert_eq!((p.len(), p.is_empty(), p.clock()), (1, false, 1));
        assert_eq!(
            p.entry(1).map(|(k, m)| (k, m.phx_ref.as_str())),
            Some(("user-1", "REF1"))
        );
    }

    #[test]
    fn same_payload_again_is_no_diff() {
        let mut p = TopicPresence::new(A);
        let _ = p.track(1, "k", obj(json!({"a": 1, "b": [1, 2]})), "R1".into());
        assert_eq!(p.track(1, "k", obj(json!({"b": [1, 2], "a": 1})), "R2".into()), None);
        assert_eq!(p.clock(), 1);
        assert_eq!(p.entry(1).unwrap().1.phx_ref, "R1");
    }

    #[test]
    fn changed_payload_is_one_diff_leaving_old_and_joining_new_with_prev() {
        let mut p = TopicPresence::new(A);
        let _ = p.track(1, "k", obj(json!({"status": "online"})), "R1".into());
        let d = p.track(1, "k", obj(json!({"status": "away"})), "R2".into()).unwrap();
        assert_eq!(
            parse(&d.to_json()),
            json!({
                "joins": {"k": {"metas": [{"phx_ref": "R2", "phx_ref_prev": "R1", "status": "away"}]}},
                "leaves": {"k": {"metas": [{"phx_ref": "R1", "status": "online"}]}}
            })
        );
        assert_eq!(p.len(), 1);
        assert_eq!(
            parse(&p.state_json()),
            json!({"k": {"metas": [{"phx_ref": "R2", "phx_ref_prev": "R1", "status": "away"}]}})
        );
        // A key change is an update too.
        let d = p.track(1, "k2", obj(json!({"status": "away"})), "R3".into()).unwrap();
        assert_eq!((d.leaves[0].0.as_str(), d.joins[0].0.as_str()), ("k", "k2"));
        assert_eq!(d.joins[0].1.phx_ref_prev.as_deref(), Some("R2"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn untrack_leaves_with_the_same_phx_ref() {
        let mut p = TopicPresence::new(A);
        let joined = p.track(7, "k", obj(json!({"x": true})), "R1".into()).unwrap();
        let left = p.untrack(7).unwrap();
        assert!(left.joins.is_empty());
        assert_eq!(left.leaves, joined.joins);
        assert_eq!(parse(&left.to_json())["leaves"]["k"]["metas"][0]["phx_ref"], "R1");
        assert!(p.is_empty());
        assert_eq!(p.state_json(), "{}");
        assert_eq!(p.untrack(7), None);
        assert_eq!(p.untrack(8), None);
    }

    #[test]
    fn two_owners_with_one_key_are_listed_oldest_first() {
        let refs = PhxRefGen::with_node(1);
        let mut p = TopicPresence::new(A);
        let (r1, r2) = (refs.next(2_000), refs.next(3_000));
        // Tracked out of time order, rendered in time order.
        let _ = p.track(2, "same", obj(json!({"tab": 2})), r2.clone());
        let _ = p.track(1, "same", obj(json!({"tab": 1})), r1.clone());
        let _ = p.track(3, "other", obj(json!({})), refs.next(4_000));
        let state = parse(&p.state_json());
        let metas = state["same"]["metas"].as_array().unwrap();
        assert_eq!(metas.len(), 2);
        assert_eq!(
            (metas[0]["phx_ref"].as_str(), metas[1]["phx_ref"].as_str()),
            (Some(&*r1), Some(&*r2))
        );
        assert_eq!(state["other"]["metas"].as_array().unwrap().len(), 1);
        // An update moves the meta to the end: it is the newest.
        let r3 = refs.next(5_000);
        let _ = p.track(1, "same", obj(json!({"tab": 1, "v": 2})), r3.clone());
        let state = parse(&p.state_json());
        assert_eq!(state["same"]["metas"][1]["phx_ref"].as_str(), Some(&*r3));
    }

    #[test]
    fn diff_json_always_has_both_keys_and_groups_by_key() {
        assert_eq!(Diff::default().to_json(), r#"{"joins":{},"leaves":{}}"#);
        assert!(Diff::default().is_empty());
        let m = |r: &str| Arc::new(Meta::new(r.into(), None, Map::new()));
        let d = Diff {
            joins: vec![("b".into(), m("1")), ("a".into(), m("2")), ("b".into(), m("3"))],
            leaves: vec![],
        };
        assert!(!d.is_empty());
        assert_eq!(
            d.to_json(),
            r#"{"joins":{"a":{"metas":[{"phx_ref":"2"}]},"b":{"metas":[{"phx_ref":"1"},{"phx_ref":"3"}]}},"leaves":{}}"#
        );
    }

    #[test]
    fn keys_and_values_are_escaped_and_parse_back() {
        let nasty = "q\"b\\s/n\nr\rt\tb\u{8}f\u{c}z\u{0}\u{1f}é😀\u{2028}";
        let mut p = TopicPresence::new(A);
        let _ = p.track(
            1,
            nasty,
            obj(json!({ nasty: nasty, "n": [null, 1.5, {"x": nasty}] })),
            "R".into(),
        );
        let _ = p.track(2, "", obj(json!({})), "R2".into());
        let state = parse(&p.state_json());
        assert_eq!(state[nasty]["metas"][0][nasty], nasty);
        assert_eq!(state[nasty]["metas"][0]["n"][2]["x"], nasty);
        assert_eq!(state[""]["metas"][0]["phx_ref"], "R2");
        let mut quoted = String::new();
        push_json_string(&mut quoted, nasty);
        assert_eq!(quoted, serde_json::to_string(nasty).unwrap());
        let left = p.untrack(1).unwrap();
        assert_eq!(parse(&left.to_json())["leaves"][nasty]["metas"][0]["phx_ref"], "R");
    }

    #[test]
    fn payload_phx_ref_never_duplicates_the_servers() {
        let mut p = TopicPresence::new(A);
        let d = p
            .track(
                1,
                "k",
                obj(json!({"phx_ref": "forged", "phx_ref_prev": "forged", "a": 1})),
                "REAL".into(),
            )
            .unwrap();
        let json = &d.joins[0].1.json;
        assert_eq!(json.matches("\"phx_ref\"").count(), 1, "{json}");
        assert_eq!(json.matches("\"phx_ref_prev\"").count(), 0, "{json}");
        assert_eq!(parse(json), json!({"phx_ref": "REAL", "a": 1}));
        // On update the server's prev wins as well.
        let d = p
            .track(1, "k", obj(json!({"phx_ref_prev": "forged", "a": 2})), "NEXT".into())
            .unwrap();
        assert_eq!(
            parse(&d.joins[0].1.json),
            json!({"phx_ref": "NEXT", "phx_ref_prev": "REAL", "a": 2})
        );
        // Forged refs alone are not a change.
        assert_eq!(p.track(1, "k", obj(json!({"phx_ref": "x", "a": 2})), "N".into()), None);
    }

    #[test]
    fn meta_json_round_trips() {
        let m = Meta::new("R2".into(), Some("R1".into()), obj(json!({"a": {"b": [1]}})));
        assert_eq!(Meta::from_json(&m.json), Some(m.clone()));
        assert_eq!(Meta::from_json("[]"), None);
        assert_eq!(Meta::from_json("{\"a\":1}"), None);
        assert_eq!(Meta::from_json("{\"phx_ref\":1}"), None);
        assert_eq!(Meta::from_json("not json"), None);
    }

    fn delta(changes: LocalChanges) -> Delta {
        match changes {
            LocalChanges::Delta(d) => d,
            LocalChanges::Full(f) => panic!("expected a delta, got {f:?}"),
        }
    }

    fn applied(outcome: MergeOutcome) -> Diff {
        match outcome {
            MergeOutcome::Applied(d) => d,
            other => panic!("expected applied, got {other:?}"),
        }
    }

    #[test]
    fn deltas_carry_compacted_changes() {
        let mut a = TopicPresence::new(A);
        let _ = a.track(1, "k1", obj(json!({})), "R1".into()); // clock 1
        let _ = a.track(2, "k2", obj(json!({})), "R2".into()); // clock 2
        let _ = a.track(3, "k3", obj(json!({})), "R3".into()); // clock 3
        let _ = a.untrack(2); // clock 4
        let _ = a.track(1, "k1", obj(json!({"v": 1})), "R5".into()); // clock 5: leaves tag 1
        let _ = a.untrack(3); // clock 6: tag 3 was added after 2, so it just disappears
        let d = delta(a.local_delta(2));
        assert_eq!((d.replica, d.from, d.to), (A, 2, 6));
        assert_eq!(d.joins.iter().map(|j| j.clock).collect::<Vec<_>>(), vec![5]);
        let mut leaves = d.leaves.clone();
        leaves.sort_unstable();
        assert_eq!(leaves, vec![1, 2]);
        let empty = delta(a.local_delta(6));
        assert_eq!(
            (empty.from, empty.to, empty.joins.len(), empty.leaves.len()),
            (6, 6, 0, 0)
        );
        assert!(matches!(a.local_delta(7), LocalChanges::Full(_)));
    }

    #[test]
    fn local_delta_falls_back_to_full_state_when_history_is_gone() {
        let mut a = TopicPresence::new(A).with_history(2);
        for owner in 0..4 {
            let _ = a.track(owner, "k", obj(json!({})), format!("R{owner}"));
        }
        for owner in 0..3 {
            let _ = a.untrack(owner); // clocks 5, 6, 7; the first removal is forgotten
        }
        assert!(matches!(a.local_delta(4), LocalChanges::Full(_)));
        assert!(matches!(a.local_delta(5), LocalChanges::Delta(_)));
        let LocalChanges::Full(full) = a.local_delta(0) else {
            panic!()
        };
        assert_eq!((full.replica, full.clock), (A, 7));
        assert_eq!(full.entries.iter().map(|e| e.clock).collect::<Vec<_>>(), vec![4]);
        let mut b = TopicPresence::new(B);
        let _ = applied(b.merge(LocalChanges::Full(full)));
        assert_eq!(b.state_json(), a.state_json());
    }

    #[test]
    fn a_gap_is_detected_and_nothing_is_applied() {
        let mut a = TopicPresence::new(A);
        let mut b = TopicPresence::new(B);
        let _ = a.track(1, "k", obj(json!({})), "R1".into());
        let first = a.local_delta(0);
        let _ = a.track(2, "k", obj(json!({})), "R2".into());
        let second = a.local_delta(1);
        assert_eq!(b.merge(second.clone()), MergeOutcome::NeedFullSync(A));
        assert!(b.is_empty());
        assert_eq!(b.known_clock(A), None);
        assert_eq!(applied(b.merge(first.clone())).joins.len(), 1);
        assert_eq!(applied(b.merge(second.clone())).joins.len(), 1);
        // Duplicates and echoes are stale.
        assert_eq!(b.merge(first), MergeOutcome::Stale);
        assert_eq!(b.merge(second), MergeOutcome::Stale);
        assert_eq!(a.merge(b.local_delta(0)), MergeOutcome::Stale); // B has no changes
        assert_eq!(a.merge(a.local_delta(0)), MergeOutcome::Stale);
        assert_eq!(b.known_clock(A), Some(2));
        assert_eq!(b.state_json(), a.state_json());
    }

    #[test]
    fn malformed_deltas_ask_for_a_full_sync() {
        let mut b = TopicPresence::new(B);
        let e = |clock| TaggedEntry {
            clock,
            key: "k".into(),
            meta: Arc::new(Meta::new(format!("R{clock}"), None, Map::new())),
        };
        let bad = [
            Delta {
                replica: A,
                from: 3,
                to: 2,
                joins: vec![],
                leaves: vec![],
            },
            Delta {
                replica: A,
                from: 0,
                to: 2,
                joins: vec![e(3)],
                leaves: vec![],
            },
            Delta {
                replica: A,
                from: 0,
                to: 2,
                joins: vec![e(0)],
                leaves: vec![],
            },
            Delta {
                replica: A,
                from: 0,
                to: 2,
                joins: vec![e(1), e(1)],
                leaves: vec![],
            },
        ];
        for d in bad {
            assert_eq!(b.merge_delta(d), MergeOutcome::NeedFullSync(A));
        }
        assert!(b.is_empty());
    }

    #[test]
    fn overlapping_delta_applies_exactly() {
        let mut a = TopicPresence::new(A);
        let mut b = TopicPresence::new(B);
        let _ = a.track(1, "k1", obj(json!({})), "R1".into()); // 1
        let _ = a.track(2, "k2", obj(json!({})), "R2".into()); // 2
        let _ = b.merge(a.local_delta(0));
        let _ = a.track(3, "k3", obj(json!({})), "R3".into()); // 3
        let _ = b.merge(a.local_delta(2));
        let _ = a.untrack(3); // 4: removes tag 3, which B holds
        let _ = a.untrack(1); // 5
        let _ = a.track(2, "k2", obj(json!({"v": 1})), "R6".into()); // 6
                                                                     // B knows up to 3; this delta starts at 1.
        let diff = applied(b.merge(a.local_delta(1)));
        let leaves: BTreeSet<_> = diff.leaves.iter().map(|(_, m)| m.phx_ref.as_str()).collect();
        let joins: BTreeSet<_> = diff.joins.iter().map(|(_, m)| m.phx_ref.as_str()).collect();
        assert_eq!(leaves, BTreeSet::from(["R1", "R2", "R3"]));
        assert_eq!(joins, BTreeSet::from(["R6"]));
        assert_eq!(b.state_json(), a.state_json());
        assert_eq!(b.known_clock(A), Some(6));
    }

    #[test]
    fn merge_full_is_idempotent_and_ignores_older_states() {
        let mut a = TopicPresence::new(A);
        let mut b = TopicPresence::new(B);
        let _ = a.track(1, "k", obj(json!({"n": 1})), "R1".into());
        let _ = a.track(2, "k", obj(json!({"n": 2})), "R2".into());
        let old = a.full_state();
        let d1 = b.merge_full(old.replica, old.clock, old.entries.clone());
        assert_eq!(d1.joins.len(), 2);
        let d2 = b.merge_full(old.replica, old.clock, old.entries.clone());
        assert!(d2.is_empty());
        let _ = a.untrack(1);
        let _ = a.track(3, "j", obj(json!({})), "R3".into());
        let new = a.full_state();
        let d3 = b.merge_full(new.replica, new.clock, new.entries.clone());
        assert_eq!((d3.leaves.len(), d3.joins.len()), (1, 1));
        assert_eq!(d3.leaves[0].1.phx_ref, "R1");
        assert!(b.merge_full(new.replica, new.clock, new.entries).is_empty());
        // A late answer from before cannot undo what we know.
        assert!(b.merge_full(old.replica, old.clock, old.entries).is_empty());
        assert_eq!(b.state_json(), a.state_json());
        // Our own state echoed back is ignored.
        let own = b.full_state();
        assert!(b.merge_full(B, own.clock + 5, vec![]).is_empty());
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn remove_replica_leaves_exactly_its_entries() {
        let mut a = TopicPresence::new(A);
        let mut b = TopicPresence::new(B);
        let mut c = TopicPresence::new(ReplicaId(3));
        let _ = a.track(1, "shared", obj(json!({})), "A1".into());
        let _ = a.track(2, "a-only", obj(json!({})), "A2".into());
        let _ = c.track(1, "shared", obj(json!({})), "C1".into());
        let _ = b.track(1, "shared", obj(json!({})), "B1".into());
        let _ = b.merge(a.local_delta(0));
        let _ = b.merge(c.local_delta(0));
        assert_eq!(b.len(), 4);
        let diff = b.remove_replica(A);
        assert!(diff.joins.is_empty());
        let gone: BTreeSet<_> = diff
            .leaves
            .iter()
            .map(|(k, m)| (k.as_str(), m.phx_ref.as_str()))
            .collect();
        assert_eq!(gone, BTreeSet::from([("shared", "A1"), ("a-only", "A2")]));
        assert_eq!(refs_in(&b.state_json()).len(), 2);
        assert!(b.remove_replica(A).is_empty());
        assert!(b.remove_replica(B).is_empty(), "own entries stay");
        assert_eq!(b.known_clock(A), None);
        // If A comes back, its next delta asks for a sync, then everything returns.
        let _ = a.track(3, "x", obj(json!({})), "A3".into());
        assert_eq!(b.merge(a.local_delta(2)), MergeOutcome::NeedFullSync(A));
        let _ = applied(b.merge(a.local_delta(0)));
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn a_recreated_topic_resyncs_when_started_above_its_old_clock() {
        let mut b = TopicPresence::new(B);
        let mut a = TopicPresence::new(A);
        let _ = a.track(1, "k", obj(json!({})), "OLD".into());
        let _ = a.untrack(1);
        let _ = a.track(2, "k", obj(json!({})), "OLD2".into());
        let _ = b.merge(a.local_delta(0));
        assert_eq!(b.known_clock(A), Some(3));
        // A drops the topic (say B's delta about OLD2 were still in flight) and makes it again.
        let mut a = TopicPresence::starting_at(A, 1_000);
        let _ = a.track(3, "k", obj(json!({})), "NEW".into());
        assert_eq!(b.merge(a.local_delta(1_000)), MergeOutcome::NeedFullSync(A));
        let since = b.known_clock(A).unwrap();
        assert!(matches!(a.local_delta(since), LocalChanges::Full(_)));
        let diff = applied(b.merge(a.local_delta(since)));
        assert_eq!(diff.leaves[0].1.phx_ref, "OLD2");
        assert_eq!(diff.joins[0].1.phx_ref, "NEW");
        assert_eq!(b.state_json(), a.state_json());
        // Restarting at 0 instead would be silently ignored; this is why `starting_at` exists.
        let mut zero = TopicPresence::new(A);
        let _ = zero.track(4, "k", obj(json!({})), "LOST".into());
        assert_eq!(b.merge(zero.local_delta(0)), MergeOutcome::Stale);
    }

    /// Two replicas tracking, updating and untracking at random while their deltas are
    /// duplicated and delivered in random order end up rendering the same state, and each
    /// node's diffs, replayed like a client would, give exactly that state.
    #[derive(Default, Debug)]
    struct Seen {
        overlap: usize,
        full: usize,
        stale: usize,
        gaps: usize,
    }

    fn converge(seed: u64, history: usize) -> Seen {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = [A, B];
        let mut nodes = [
            TopicPresence::new(A).with_history(history),
            TopicPresence::new(B).with_history(history),
        ];
        let gens = [PhxRefGen::with_node(1), PhxRefGen::with_node(2)];
        let mut views = [ClientView::default(), ClientView::default()];
        let mut queue: Vec<(usize, LocalChanges)> = Vec::new();
        let mut now = 1_700_000_000_000_000_000u64;
        // Outcomes seen: overlapping deltas applied, full states merged, stale, gaps.
        let mut seen = Seen::default();
        let mut deliver = |nodes: &mut [TopicPresence; 2],
                           views: &mut [ClientView; 2],
                           queue: &mut Vec<(usize, LocalChanges)>,
                           i: usize| {
            let (to, changes) = queue.swap_remove(i);
            match &changes {
                LocalChanges::Full(_) => seen.full += 1,
                LocalChanges::Delta(d) => {
                    let known = nodes[to].known_clock(d.replica).unwrap_or(0);
                    seen.overlap += usize::from(d.from < known && known < d.to);
                }
            }
            match nodes[to].merge(changes) {
                MergeOutcome::Applied(diff) => views[to].apply(&diff),
                MergeOutcome::Stale => seen.stale += 1,
                MergeOutcome::NeedFullSync(r) => {
                    seen.gaps += 1;
                    let from = ids.iter().position(|id| *id == r).unwrap();
                    let since = nodes[to].known_clock(r).unwrap_or(0);
                    queue.push((to, nodes[from].local_delta(since)));
                }
            }
        };
        for _ in 0..3_000 {
            if rng.random_bool(0.55) {
                let n = rng.random_range(0..2);
                let owner = rng.random_range(0..12u64);
                // The key is fixed per channel; several channels share each key.
                let key = ["k\"1", "k2", "ü3"][(owner % 3) as usize];
                now += rng.random_range(0..3);
                let since = nodes[n].clock();
                let diff = if rng.random_bool(0.3) {
                    nodes[n].untrack(owner)
                } else {
                    let payload = obj(json!({"v": rng.random_range(0..3), "n": n}));
                    nodes[n].track(owner, key, payload, gens[n].next(now))
                };
                if let Some(diff) = diff {
                    views[n].apply(&diff);
                }
                if nodes[n].clock() > since {
                    let changes = nodes[n].local_delta(since);
                    for _ in 0..rng.random_range(1..3) {
                        queue.push((1 - n, changes.clone()));
                    }
                }
            } else if !queue.is_empty() {
                let i = rng.random_range(0..queue.len());
                deliver(&mut nodes, &mut views, &mut queue, i);
            }
        }
        while !queue.is_empty() {
            let i = rng.random_range(0..queue.len());
            deliver(&mut nodes, &mut views, &mut queue, i);
        }
        assert_eq!(nodes[0].known_clock(B), Some(nodes[1].clock()));
        assert_eq!(nodes[1].known_clock(A), Some(nodes[0].clock()));
        let state = nodes[0].state_json();
        assert_eq!(state, nodes[1].state_json());
        let refs = refs_in(&state);
        assert_eq!(refs.len(), nodes[0].len());
        assert_eq!(nodes[0].local.len() + nodes[1].local.len(), nodes[0].len());
        assert!(!refs.is_empty());
        for view in &views {
            assert_eq!(view.0, refs);
        }
        // Metas under one key are oldest first.
        for group in parse(&state).as_object().unwrap().values() {
            let times: Vec<_> = group["metas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ref_time(m["phx_ref"].as_str().unwrap()).unwrap())
                .collect();
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        }
        seen
    }

    #[test]
    fn replicas_converge_under_reordering_and_duplication() {
        let seen: Vec<_> = (0..20).map(|seed| converge(seed, DEFAULT_HISTORY)).collect();
        // Every merge path was exercised.
        assert!(seen.iter().any(|s| s.overlap > 0), "{seen:?}");
        assert!(seen.iter().all(|s| s.stale > 0 && s.gaps > 0), "{seen:?}");
    }

    #[test]
    fn replicas_converge_when_history_is_short() {
        let seen: Vec<_> = (100..120).map(|seed| converge(seed, 1)).collect();
        assert!(seen.iter().all(|s| s.full > 0), "{seen:?}");
    }

    #[test]
    fn a_thousand_clients_track_and_render() {
        let refs = PhxRefGen::with_node(9);
        let mut p = TopicPresence::new(A);
        let started = std::time::Instant::now();
        let mut seen = HashSet::new();
        for owner in 0..1_000u64 {
            let key = format!("user-{owner}");
            let d = p
                .track(
                    owner,
                    &key,
                    obj(json!({"online_at": "2025-01-01T00:00:00Z"})),
                    refs.next(owner),
                )
                .unwrap();
            assert!(seen.insert(d.joins[0].1.phx_ref.clone()));
            // Every join is followed by a full state for the joiner.
            let _ = p.state_json();
        }
        let state = parse(&p.state_json());
        assert_eq!(state.as_object().unwrap().len(), 1_000);
        assert_eq!(p.len(), 1_000);
        for owner in 0..1_000u64 {
            assert!(p.untrack(owner).is_some());
        }
        assert!(p.is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
