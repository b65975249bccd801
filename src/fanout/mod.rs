//! Topic → subscribers, and delivery to them.
//!
//! Publishing encodes a message at most once per wire version and pushes the shared bytes
//! into each subscriber's [`Outbox`] without ever waiting: a full outbox disconnects its
//! own client, the publisher moves on. The registry is sharded by topic so publishers to
//! different topics never contend, and a shard's lock is held only while pushing.
//! Knows topics and bytes, not what events mean.

use std::hash::Hash;
use std::sync::{Arc, RwLock};

use ahash::{AHashMap, RandomState};
use realtime_protocol::{Vsn, WireFrame};

use crate::observability;
use crate::transport::outbox::Outbox;

/// Identifies one joined channel (unique for the life of the process).
pub type ChannelId = u64;

const SHARDS: usize = 64;

/// A fan-out topic. Public and private channels of the same name are distinct topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    /// `config.private` of the joins on it.
    pub private: bool,
    /// The full topic, e.g. `realtime:room1` (what goes in every frame).
    pub topic: Arc<str>,
}

impl TopicKey {
    /// The key for a full topic name.
    pub fn new(topic: &str, private: bool) -> TopicKey {
        TopicKey {
            private,
            topic: Arc::from(topic),
        }
    }

    /// The topic without `realtime:`, as Supabase names channels in `system` messages.
    pub fn sub_topic(&self) -> &str {
        self.topic.strip_prefix("realtime:").unwrap_or(&self.topic)
    }
}

/// One joined channel, as the fan-out sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The channel.
    pub channel: ChannelId,
    /// Its socket's wire version.
    pub vsn: Vsn,
    /// Its socket's outbound queue.
    pub outbox: Arc<Outbox>,
    /// May receive broadcasts (always on public topics; RLS-granted on private ones).
    pub broadcast_read: bool,
    /// May receive presence diffs (same rule).
    pub presence_read: bool,
    /// Ids of stored messages replayed to this channel at join: their live copies are
    /// not delivered to it again.
    pub replayed: Option<Arc<ahash::AHashSet<String>>>,
}

type Shard = RwLock<AHashMap<TopicKey, Vec<Subscriber>>>;

/// The subscriber registry.
pub struct Registry {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::new(AHashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Registry {
    fn shard(&self, key: &TopicKey) -> &Shard {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Adds a channel to a topic; true when it is the topic's first.
    pub fn subscribe(&self, key: &TopicKey, sub: Subscriber) -> bool {
        let mut shard = crate::sync::write(self.shard(key), "fan-out shard");
        let subs = shard.entry(key.clone()).or_default();
        subs.push(sub);
        subs.len() == 1
    }

    /// Replaces a channel's entry (same channel id) in place, as when a new token changes
    /// what it may read; gives `sub` back when the channel is not subscribed.
    pub fn replace(&self, key: &TopicKey, sub: Subscriber) -> Result<(), Subscriber> {
        let mut shard = crate::sync::write(self.shard(key), "fan-out shard");
        let Some(entry) = shard
            .get_mut(key)
            .and_then(|subs| subs.iter_mut().find(|s| s.channel == sub.channel))
        else {
            return Err(sub);
        };
        *entry = sub;
        Ok(())
    }

    /// Removes a channel from a topic and drops the topic when it empties; true when this
    /// removal emptied it.
    pub fn unsubscribe(&self, key: &TopicKey, channel: ChannelId) -> bool {
        let mut shard = crate::sync::write(self.shard(key), "fan-out shard");
        let Some(subs) = shard.get_mut(key) else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| s.channel == channel) else {
            return false;
        };
        subs.swap_remove(i);
        if subs.is_empty() {
            shard.remove(key);
            return true;
        }
        false
    }

    /// Number of channels subscribed to a topic.
    pub fn subscriber_count(&self, key: &TopicKey) -> usize {
        crate::sync::read(self.shard(key), "fan-out shard")
            .get(key)
            .map_or(0, Vec::len)
    }

    /// Every topic with members on this node that `keep` selects, with its member count,
    /// in no particular order (for the channels API; reads each shard once).
    pub fn topics(&self, keep: impl Fn(&TopicKey) -> bool) -> Vec<(TopicKey, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = crate::sync::read(shard, "fan-out shard");
            out.extend(
                shard
                    .iter()
                    .filter(|(k, _)| keep(k))
                    .map(|(k, subs)| (k.clone(), subs.len())),
            );
        }
        out
    }

    /// Delivers to every subscriber but `exclude`. `encode` is called at most once per
    /// wire version; `None` means receivers of that version get nothing. Returns how many
    /// subscribers the message was queued for.
    pub fn publish(
        &self,
        key: &TopicKey,
        exclude: Option<ChannelId>,
        wants: impl Fn(&Subscriber) -> bool,
        mut encode: impl FnMut(Vsn) -> Option<WireFrame>,
    ) -> usize {
        let started = std::time::Instant::now();
        let shard = crate::sync::read(self.shard(key), "fan-out shard");
        let Some(subs) = shard.get(key) else {
            return 0;
        };
        let mut v1: Option<Option<WireFrame>> = None;
        let mut v2: Option<Option<WireFrame>> = None;
        let mut delivered = 0;
        for sub in subs {
            if Some(sub.channel) == exclude || !wants(sub) {
                continue;
            }
            let slot = match sub.vsn {
                Vsn::V1 => &mut v1,
                Vsn::V2 => &mut v2,
            };
            if let Some(frame) = slot.get_or_insert_with(|| encode(sub.vsn)) {
                if sub.outbox.push(frame.clone()) {
                    delivered += 1;
                }
            }
        }
        drop(shard);
        observability::metrics::fanout_done(started);
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::outbox::Outgoing;
    use bytes::Bytes;
    use realtime_protocol::encode;

    fn sub(id: ChannelId, vsn: Vsn) -> (Subscriber, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        (
            Subscriber {
                channel: id,
                vsn,
                outbox: outbox.clone(),
                broadcast_read: true,
                presence_read: true,
                replayed: None,
            },
            outbox,
        )
    }

    fn drained(o: &Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        o.drain(&mut out);
        out.into_iter()
            .filter_map(|i| match i {
                Outgoing::Frame(f) => Some(f.bytes().clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn encodes_once_per_version_and_shares_bytes() {
        let reg = Registry::default();
        let key = TopicKey::new("realtime:room", false);
        let (a, oa) = sub(1, Vsn::V2);
        let (b, ob) = sub(2, Vsn::V2);
        let (c, oc) = sub(3, Vsn::V1);
        for s in [a, b, c] {
            reg.subscribe(&key, s);
        }
        let mut calls = 0;
        let n = reg.publish(
            &key,
            None,
            |_| true,
            |vsn| {
                calls += 1;
                Some(encode::fastlane(vsn, "realtime:room", "e", b"{}"))
            },
        );
        assert_eq!((n, calls), (3, 2));
        let (fa, fb) = (drained(&oa), drained(&ob));
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr(), "V2 receivers share one buffer");
        assert_eq!(drained(&oc).len(), 1);
    }

    #[test]
    fn exclude_private_and_unsubscribe() {
        let reg = Registry::default();
        let public = TopicKey::new("realtime:room", false);
        let private = TopicKey::new("realtime:room", true);
        let (a, oa) = sub(1, Vsn::V2);
        let (b, ob) = sub(2, Vsn::V2);
        assert!(reg.subscribe(&public, a), "the first member");
        assert!(reg.subscribe(&private, b));
        let frame = |vsn| Some(encode::fastlane(vsn, "realtime:room", "e", b"{}"));
        assert_eq!(reg.publish(&public, Some(1), |_| true, frame), 0);
        assert_eq!(reg.publish(&public, None, |_| true, frame), 1);
        assert!(drained(&ob).is_empty(), "a private topic is not the public one");
        assert_eq!(drained(&oa).len(), 1);
        assert!(reg.unsubscribe(&public, 1), "the last member leaving empties the topic");
        assert!(!reg.unsubscribe(&public, 1));
        assert_eq!(reg.subscriber_count(&public), 0);
        assert_eq!(reg.subscriber_count(&private), 1);
    }
}
