//! Which channel subscribed to which table, for the replication task to look up per
//! change. Entries are replaced whole (a token refresh re-resolves them) and removed when
//! the channel goes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use realtime_protocol::Vsn;
use serde_json::{Map, Value};

use super::subscribe::Subscription;
use crate::fanout::ChannelId;
use crate::transport::outbox::Outbox;

/// One channel's subscriptions and how to reach it.
#[derive(Debug)]
pub struct ChannelSubs {
    /// The channel.
    pub channel: ChannelId,
    /// Its topic (frames carry it).
    pub topic: Arc<str>,
    /// Its join_ref (for `system` pushes).
    pub join_ref: Option<String>,
    /// Its socket's version.
    pub vsn: Vsn,
    /// Its socket's queue.
    pub outbox: Arc<Outbox>,
    /// The JWT `role` claim: the database role rows are checked as.
    pub role: String,
    /// The JWT claims as JSON text (`request.jwt.claims`).
    pub claims: Arc<str>,
    /// `sub` claim, if any.
    pub sub: Option<String>,
    /// The bindings as sent, to resolve again after reconnects and token refreshes.
    pub bindings: Arc<Vec<Map<String, Value>>>,
    /// Resolved subscriptions (empty while pending or failed).
    pub subs: Vec<Subscription>,
}

/// The channels subscribed to one table, with their viewers numbered: what a delivery
/// round works from. Built once per change of the registry (not per row change), so a
/// round touches each subscriber through plain indexes instead of hashing its claims.
#[derive(Debug, Default)]
pub struct TableSubs {
    /// The channels.
    pub channels: Vec<Arc<ChannelSubs>>,
    /// The distinct roles among them.
    pub roles: Vec<String>,
    /// Per channel: its role, an index into `roles`.
    pub role_of: Vec<u32>,
    /// The distinct viewers (role and claims): per viewer, a channel that has them.
    pub viewers: Vec<u32>,
    /// Per channel: its viewer, an index into `viewers`.
    pub viewer_of: Vec<u32>,
}

impl TableSubs {
    fn new(channels: Vec<Arc<ChannelSubs>>) -> TableSubs {
        let mut roles: Vec<String> = Vec::new();
        let mut role_of = Vec::with_capacity(channels.len());
        let mut viewers = Vec::new();
        let mut viewer_of = Vec::with_capacity(channels.len());
        let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
        for (i, ch) in channels.iter().enumerate() {
            let role = match roles.iter().position(|r| *r == ch.role) {
                Some(r) => r,
                None => {
                    roles.push(ch.role.clone());
                    roles.len() - 1
                }
            };
            role_of.push(role as u32);
            let next = viewers.len() as u32;
            let viewer = *seen.entry((&ch.role, &ch.claims)).or_insert(next);
            if viewer == next {
                viewers.push(i as u32);
            }
            viewer_of.push(viewer);
        }
        TableSubs {
            channels,
            roles,
            role_of,
            viewers,
            viewer_of,
        }
    }
}

#[derive(Default)]
struct Inner {
    channels: HashMap<ChannelId, Arc<ChannelSubs>>,
    by_table: HashMap<u32, HashSet<ChannelId>>,
    /// [`TableSubs`] built since the table's subscribers last changed.
    built: HashMap<u32, Arc<TableSubs>>,
}

/// The subscription registry.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl Registry {
    /// Puts (or replaces) a channel's entry.
    pub fn put(&self, entry: ChannelSubs) {
        let mut inner = crate::sync::write(&self.inner, "postgres changes registry");
        Self::unindex(&mut inner, entry.channel);
        for s in &entry.subs {
            inner.by_table.entry(s.table).or_default().insert(entry.channel);
            inner.built.remove(&s.table);
        }
        inner.channels.insert(entry.channel, Arc::new(entry));
    }

    /// Replaces a channel's subscriptions if the channel is still registered; false when
    /// it left meanwhile.
    pub fn update(&self, channel: ChannelId, subs: Vec<Subscription>) -> bool {
        let mut inner = crate::sync::write(&self.inner, "postgres changes registry");
        let Some(old) = inner.channels.get(&channel) else {
            return false;
        };
        let entry = ChannelSubs {
            channel,
            topic: old.topic.clone(),
            join_ref: old.join_ref.clone(),
            vsn: old.vsn,
            outbox: old.outbox.clone(),
            role: old.role.clone(),
            claims: old.claims.clone(),
            sub: old.sub.clone(),
            bindings: old.bindings.clone(),
            subs,
        };
        Self::unindex(&mut inner, channel);
        for s in &entry.subs {
            inner.by_table.entry(s.table).or_default().insert(channel);
            inner.built.remove(&s.table);
        }
        inner.channels.insert(channel, Arc::new(entry));
        true
    }

    /// Drops a channel.
    pub fn remove(&self, channel: ChannelId) {
        let mut inner = crate::sync::write(&self.inner, "postgres changes registry");
        Self::unindex(&mut inner, channel);
        inner.channels.remove(&channel);
    }

    fn unindex(inner: &mut Inner, channel: ChannelId) {
        if let Some(old) = inner.channels.get(&channel).cloned() {
            for s in &old.subs {
                inner.built.remove(&s.table);
                if let Some(set) = inner.by_table.get_mut(&s.table) {
                    set.remove(&channel);
                    if set.is_empty() {
                        inner.by_table.remove(&s.table);
                    }
                }
            }
        }
    }

    /// Channels with a subscription on `table`.
    pub fn for_table(&self, table: u32) -> Arc<TableSubs> {
        if let Some(built) = crate::sync::read(&self.inner, "postgres changes registry")
            .built
            .get(&table)
        {
            return built.clone();
        }
        let mut inner = crate::sync::write(&self.inner, "postgres changes registry");
        let channels: Vec<Arc<ChannelSubs>> = inner
            .by_table
            .get(&table)
            .map(|ids| ids.iter().filter_map(|id| inner.channels.get(id).cloned()).collect())
            .unwrap_or_default();
        let built = Arc::new(TableSubs::new(channels));
        inner.built.insert(table, built.clone());
        built
    }

    /// Every registered channel.
    pub fn all(&self) -> Vec<Arc<ChannelSubs>> {
        crate::sync::read(&self.inner, "postgres changes registry")
            .channels
            .values()
            .cloned()
            .collect()
    }

    /// One channel's entry.
    pub fn get(&self, channel: ChannelId) -> Option<Arc<ChannelSubs>> {
        crate::sync::read(&self.inner, "postgres changes registry")
            .channels
            .get(&channel)
            .cloned()
    }
}
