//! Server-set presence: entries tracked through the REST API (`POST
//! /api/channels/:topic/presence`) by integrations with no socket, such as a calendar
//! marking someone "in a meeting".
//!
//! Each entry is an ordinary local CRDT entry whose owner is a made-up channel id from
//! a range sockets never use, so members see plain `presence_diff` joins and leaves, and
//! in a cluster the entry is owned and replicated by the node that received the POST. An
//! entry leaves at its TTL ([`crate::presence::PresenceHub::expire_server`]).

use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;

use crate::fanout::TopicKey;

/// The meta field that marks an entry as server-set: `"server": true`. Set by the server
/// on every REST-tracked entry (overriding the caller's own `server` field).
pub const SERVER_FIELD: &str = "server";

/// Owners of server entries count down from here; channel ids count up from 1, so the two
/// never meet.
const FIRST_OWNER: u64 = u64::MAX;

/// One server-set entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// Its owner id in the topic's CRDT.
    pub owner: u64,
    /// Unix time in ms at which it leaves.
    pub expires_ms: u64,
}

/// Every server-set entry on this node, by topic and presence key.
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
