//! Server-set presence: entries tracked through the REST API (`POST
//! /api/channels/:topic/presence`) by integrations with no socket, such as a calendar
//! marking someone "in a meeting".
//!
//! Each entry is a [`Record`] (meta, TTL, `phx_ref`, and the node that *holds* it) plus,
//! on its holder, an ordinary local CRDT entry whose owner is a made-up channel id from a
//! range sockets never use, so members see plain `presence_diff` joins and leaves. An
//! entry leaves at its TTL ([`PresenceHub::expire_server`]).
//!
//! In a cluster the records are cluster state: every change made here (a POST, a DELETE, a
//! dead node's entry taken over) is handed to the publish path
//! ([`Publisher::server_presence`]), every node keeps every record, and the holder alone
//! has it in its CRDT (replicated like its sockets' presence). So a DELETE on any node
//! removes it, any node lists it ([`PresenceHub::snapshot`]), the per-topic limit counts
//! every node's entries, and when the holder dies the topic's reporter takes the entries
//! over with the TTL they had left ([`PresenceHub::adopt_server`]). Concurrent writes of
//! one key on two nodes are applied in the order each node receives them; the holder's
//! order decides what members see.

use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use serde_json::{Map, Value};

use super::{now_millis, now_nanos, PresenceHub};
use crate::fanout::TopicKey;
use crate::publish::Publisher;

/// The meta field that marks an entry as server-set: `"server": true`. Set by the server
/// on every REST-tracked entry (overriding the caller's own `server` field).
pub const SERVER_FIELD: &str = "server";

/// Owners of server entries count down from here; channel ids count up from 1, so the two
/// never meet.
const FIRST_OWNER: u64 = u64::MAX;

/// A server-set entry as every node of a cluster knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The node (presence replica id) whose CRDT holds the entry.
    pub holder: u64,
    /// Unix time in ms at which it leaves.
    pub expires_ms: u64,
    /// The `phx_ref` its holder tracks it under.
    pub phx_ref: String,
    /// The meta as posted, `"server": true` included.
    pub meta: Map<String, Value>,
}

/// One server-set entry on this node.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub record: Record,
    /// Its owner id in this node's CRDT, while this node holds it.
    pub owner: Option<u64>,
}

/// Every server-set entry known here, by topic and presence key.
#[derive(Default)]
pub(super) struct ServerEntries {
    pub by_topic: AHashMap<TopicKey, AHashMap<String, Entry>>,
}

/// Hands out owner ids for server entries.
pub(super) struct Owners(AtomicU64);

impl Owners {
    pub fn new() -> Owners {
        Owners(AtomicU64::new(FIRST_OWNER))
    }

    pub fn next(&self) -> u64 {
        self.0.fetch_sub(1, Ordering::Relaxed)
    }
}

/// Why a server-set entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The topic already has the most server entries allowed
    /// (`PRESENCE_SERVER_MAX_PER_TOPIC`).
    TooMany,
}

/// `online` (a `presence_state` payload) with `records` added as metas.
pub(super) fn with_records(online: &str, records: &[&(String, Record)]) -> std::sync::Arc<str> {
    let mut state: Map<String, Value> = serde_json::from_str(online).unwrap_or_default();
    for (key, r) in records {
        let meta = super::state::Meta::new(r.phx_ref.clone(), None, r.meta.clone());
        let meta: Value = serde_json::from_str(&meta.json).unwrap_or(Value::Null);
        let group = state
            .entry(key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(metas) = group.get_mut("metas").and_then(Value::as_array_mut) {
            metas.push(meta);
        }
    }
    Value::Object(state).to_string().into()
}

impl PresenceHub {
    /// Tracks or refreshes a server-set entry under `presence_key` until `expires_ms`;
    /// `meta` gets `"server": true`. A topic holds at most `max_per_topic` of them (every
    /// node's, as far as this node knows them). A new entry is held here; an existing one
    /// stays with its holder.
    pub fn track_server(
        &self,
        publish: &Publisher,
        key: &TopicKey,
        presence_key: &str,
        mut meta: Map<String, Value>,
        expires_ms: u64,
        max_per_topic: usize,
    ) -> Result<(), Refused> {
        meta.insert(SERVER_FIELD.to_owned(), Value::Bool(true));
        let phx_ref = self.refs.next(now_nanos());
        let mut server = crate::sync::lock(&self.server, "server presence");
        let entries = server.by_topic.entry(key.clone()).or_default();
        let count = entries.len();
        if !entries.contains_key(presence_key) && count >= max_per_topic {
            if count == 0 {
                server.by_topic.remove(key);
            }
            return Err(Refused::TooMany);
        }
        let holder = self.replica.0;
        let entry = entries.entry(presence_key.to_owned()).or_insert_with(|| Entry {
            record: Record {
                holder,
                expires_ms,
                phx_ref: String::new(),
                meta: Map::new(),
            },
            owner: None,
        });
        entry.record.expires_ms = expires_ms;
        entry.record.phx_ref = phx_ref;
        entry.record.meta = meta;
        self.hold(publish, key, presence_key, entry, true);
        publish.server_presence(key, presence_key, Some(&entry.record));
        Ok(())
    }

    /// Removes a server-set entry (wherever it is held); false when there was none under
    /// that key.
    pub fn untrack_server(&self, publish: &Publisher, key: &TopicKey, presence_key: &str) -> bool {
        if self.drop_record(publish, key, presence_key) {
            publish.server_presence(key, presence_key, None);
            true
        } else {
            false
        }
    }

    /// Another node changed a record (`None`: removed it).
    pub fn apply_server(&self, publish: &Publisher, key: &TopicKey, presence_key: &str, record: Option<Record>) {
        let Some(record) = record else {
            self.drop_record(publish, key, presence_key);
            return;
        };
        let mut server = crate::sync::lock(&self.server, "server presence");
        let entry = server
            .by_topic
            .entry(key.clone())
            .or_default()
            .entry(presence_key.to_owned())
            .or_insert(Entry {
                record: record.clone(),
                owner: None,
            });
        entry.record = record;
        self.hold(publish, key, presence_key, entry, true);
    }

    /// Replaces every record held by `node` with its full list (it resent its state).
    pub fn replace_server_of(&self, publish: &Publisher, node: u64, records: Vec<(TopicKey, String, Record)>) {
        {
            let mut server = crate::sync::lock(&self.server, "server presence");
            server.by_topic.retain(|_, entries| {
                entries.retain(|_, e| e.record.holder != node);
                !entries.is_empty()
            });
        }
        for (key, presence_key, record) in records {
            self.apply_server(publish, &key, &presence_key, Some(record));
        }
    }

    /// The records held by `node` whose TTL has not passed.
    pub fn server_held_by(&self, node: u64) -> Vec<(TopicKey, String, Record)> {
        let now = now_millis();
        let server = crate::sync::lock(&self.server, "server presence");
        server
            .by_topic
            .iter()
            .flat_map(|(key, entries)| {
                entries
                    .iter()
                    .filter(|(_, e)| e.record.holder == node && e.record.expires_ms > now)
                    .map(|(k, e)| (key.clone(), k.clone(), e.record.clone()))
            })
            .collect()
    }

    /// The holder of a record died: `new_holder` holds it from now on (with the TTL it had
    /// left). When that is this node, it is tracked here (no webhook: the entry did not
    /// leave) under a new `phx_ref`, and the new record is returned for the other nodes.
    pub fn adopt_server(
        &self,
        publish: &Publisher,
        key: &TopicKey,
        presence_key: &str,
        dead: u64,
        new_holder: u64,
    ) -> Option<Record> {
        let mut server = crate::sync::lock(&self.server, "server presence");
        let entry = server.by_topic.get_mut(key)?.get_mut(presence_key)?;
        if entry.record.holder != dead {
            return None;
        }
        entry.record.holder = new_holder;
        if new_holder != self.replica.0 {
            return None;
        }
        entry.record.phx_ref = self.refs.next(now_nanos());
        self.hold(publish, key, presence_key, entry, false);
        Some(entry.record.clone())
    }

    /// Whether this node holds a server entry of `key`.
    pub fn holds_server(&self, key: &TopicKey) -> bool {
        let server = crate::sync::lock(&self.server, "server presence");
        server
            .by_topic
            .get(key)
            .is_some_and(|entries| entries.values().any(|e| e.owner.is_some()))
    }

    /// A topic's records, by presence key.
    pub(super) fn server_records(&self, key: &TopicKey) -> Vec<(String, Record)> {
        let now = now_millis();
        let server = crate::sync::lock(&self.server, "server presence");
        server.by_topic.get(key).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .filter(|(_, e)| e.record.expires_ms > now)
                .map(|(k, e)| (k.clone(), e.record.clone()))
                .collect()
        })
    }

    /// Server-set entries whose TTL passed leave (on every node: each drops the record,
    /// the holder untracks it); also forgets old last-seen times. Returns how many left.
    pub fn expire_server(&self, publish: &Publisher, now_ms: u64) -> usize {
        let mut server = crate::sync::lock(&self.server, "server presence");
        let mut expired = Vec::new();
        server.by_topic.retain(|key, entries| {
            entries.retain(|_, e| {
                let keep = e.record.expires_ms > now_ms;
                if !keep {
                    expired.push((key.clone(), e.owner));
                }
                keep
            });
            !entries.is_empty()
        });
        for (key, owner) in &expired {
            if let Some(owner) = owner {
                self.untrack(publish, key, *owner);
            }
        }
        expired.len()
    }

    /// Removes a record, and its CRDT entry when held here; false when there was none.
    fn drop_record(&self, publish: &Publisher, key: &TopicKey, presence_key: &str) -> bool {
        let mut server = crate::sync::lock(&self.server, "server presence");
        let Some(entries) = server.by_topic.get_mut(key) else {
            return false;
        };
        let Some(entry) = entries.remove(presence_key) else {
            return false;
        };
        if entries.is_empty() {
            server.by_topic.remove(key);
        }
        if let Some(owner) = entry.owner {
            self.untrack(publish, key, owner);
        }
        true
    }

    /// Makes this node's CRDT match a record: tracked under the record's `phx_ref` when
    /// this node holds it, untracked (without a webhook: it moved) when it no longer does.
    fn hold(&self, publish: &Publisher, key: &TopicKey, presence_key: &str, entry: &mut Entry, observe: bool) {
        if entry.record.holder == self.replica.0 {
            let owner = *entry.owner.get_or_insert_with(|| self.server_owners.next());
            let meta = entry.record.meta.clone();
            let phx_ref = entry.record.phx_ref.clone();
            self.track_as(publish, key, owner, presence_key, meta, phx_ref, observe);
        } else if let Some(owner) = entry.owner.take() {
            self.untrack_as(publish, key, owner, false);
        }
    }
}
