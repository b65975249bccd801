//! The envelopes of cluster-wide state (see [`super::reporting`]): a node's occupancy
//! changes, its reporter's `channel.*` reports, server-set presence records, and a node's
//! whole state, sent in parts of at most [`PART_BYTES`] to a node it has just heard from
//! (or to every node after an engine outage).
//!
//! ```text
//! kind 13, node state: u32 part (0 first) · u8 flags (1 last part, 2 answer with yours)
//!          · u32 count · (u8 bits (1 private, 2 members on the origin, 4 reported occupied)
//!                         · str16 topic)…
//!          · u32 count · (u8 private · str16 topic · str16 key · record)…
//! record:  u64 holder · u64 expires ms · str16 phx_ref · bytes32 meta JSON
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::envelope::{
    header, node_header, put_str16, Body, Malformed, Reader, KIND_NODE_STATE, KIND_OCCUPANCY, KIND_REPORTED,
    KIND_SERVER_DEL, KIND_SERVER_SET,
};
use super::occupancy::StateEntry;
use crate::fanout::TopicKey;
use crate::presence::server::Record;

/// A node state part stays under this size (NATS' default payload limit is 1 MiB).
pub const PART_BYTES: usize = 256 * 1024;

const LAST: u8 = 1;
const ASK: u8 = 2;

/// One part of a node's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeState {
    /// Its number, from 0.
    pub part: u32,
    /// The last part: the state is complete.
    pub last: bool,
    /// The receiver should send its own state back (the sender lost messages).
    pub ask: bool,
    /// Topics it has members on, or that the cluster reported occupied.
    pub topics: Vec<StateEntry>,
    /// Server-set presence records it holds: topic, key, record.
    pub records: Vec<(TopicKey, String, Record)>,
}

/// The origin got its first (`true`) or lost its last member on `key`.
pub fn encode_occupancy(origin: u64, key: &TopicKey, occupied: bool) -> Option<Bytes> {
    flag(KIND_OCCUPANCY, origin, key, occupied)
}

/// The origin, `key`'s reporter, sent `channel.occupied` (`true`) or `channel.vacated`.
pub fn encode_reported(origin: u64, key: &TopicKey, occupied: bool) -> Option<Bytes> {
    flag(KIND_REPORTED, origin, key, occupied)
}

fn flag(kind: u8, origin: u64, key: &TopicKey, on: bool) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(16 + key.topic.len());
    header(&mut out, kind, origin, 0, key)?;
    out.put_u8(u8::from(on));
    Some(out.freeze())
}

/// A server-set record changed on the origin (`None`: removed).
pub fn encode_server(origin: u64, key: &TopicKey, presence_key: &str, record: Option<&Record>) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(64 + key.topic.len() + presence_key.len());
    match record {
        Some(record) => {
            header(&mut out, KIND_SERVER_SET, origin, 0, key)?;
            put_str16(&mut out, presence_key)?;
            put_record(&mut out, record)?;
        }
        None => {
            header(&mut out, KIND_SERVER_DEL, origin, 0, key)?;
            put_str16(&mut out, presence_key)?;
        }
    }
    Some(out.freeze())
}

fn put_record(out: &mut BytesMut, r: &Record) -> Option<()> {
    out.put_u64_le(r.holder);
    out.put_u64_le(r.expires_ms);
    put_str16(out, &r.phx_ref)?;
    let meta = Value::Object(r.meta.clone()).to_string();
    out.put_u32_le(u32::try_from(meta.len()).ok()?);
    out.put_slice(meta.as_bytes());
    Some(())
}

fn record(r: &mut Reader<'_>) -> Result<Record, Malformed> {
    let holder = r.u64()?;
    let expires_ms = r.u64()?;
    let phx_ref = r.str16()?.to_owned();
    let len = r.u32()? as usize;
    let json = r.take(len)?;
    let meta: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| Malformed::Invalid("record meta is not a JSON object"))?;
    Ok(Record {
        holder,
        expires_ms,
        phx_ref,
        meta,
    })
}

pub(super) fn decode_server_set(r: &mut Reader<'_>) -> Result<Body, Malformed> {
    let presence_key = r.str16()?.to_owned();
    let record = record(r)?;
    Ok(Body::ServerSet { presence_key, record })
}

/// `origin`'s whole state in parts of at most about [`PART_BYTES`]; `ask`: the receivers
/// answer with theirs. Entries that cannot be encoded (a key over 65,535 bytes) are left
/// out.
pub fn encode_node_state(
    origin: u64,
    ask: bool,
    topics: &[StateEntry],
    records: &[(TopicKey, String, Record)],
) -> Vec<Bytes> {
    let mut parts = Vec::new();
    let mut topic_items: Vec<BytesMut> = Vec::with_capacity(topics.len());
    for e in topics {
        let mut b = BytesMut::with_capacity(3 + e.key.topic.len());
        b.put_u8(u8::from(e.key.private) | if e.here { 2 } else { 0 } | if e.reported { 4 } else { 0 });
        if put_str16(&mut b, &e.key.topic).is_some() {
            topic_items.push(b);
        }
    }
    let mut record_items: Vec<BytesMut> = Vec::with_capacity(records.len());
    for (key, presence_key, r) in records {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(u8::from(key.private));
        if put_str16(&mut b, &key.topic)
            .and_then(|()| put_str16(&mut b, presence_key))
            .and_then(|()| put_record(&mut b, r))
            .is_some()
        {
            record_items.push(b);
        }
    }
    let (mut t, mut r) = (topic_items.into_iter().peekable(), record_items.into_iter().peekable());
    loop {
        let mut size = 0;
        let mut these_topics = Vec::new();
        while let Some(item) = t.next_if(|i| size == 0 || size + i.len() <= PART_BYTES) {
            size += item.len();
            these_topics.push(item);
        }
        let mut these_records = Vec::new();
        while let Some(item) = r.next_if(|i| size == 0 || size + i.len() <= PART_BYTES) {
            size += item.len();
            these_records.push(item);
        }
        let last = t.peek().is_none() && r.peek().is_none();
        let mut out = BytesMut::with_capacity(24 + size);
        node_header(&mut out, KIND_NODE_STATE, origin);
        out.put_u32_le(parts.len() as u32);
        out.put_u8(if last { LAST } else { 0 } | if ask { ASK } else { 0 });
        out.put_u32_le(these_topics.len() as u32);
        for item in these_topics {
            out.put_slice(&item);
        }
        out.put_u32_le(these_records.len() as u32);
        for item in these_records {
            out.put_slice(&item);
        }
        parts.push(out.freeze());
        if last {
            return parts;
        }
    }
}

pub(super) fn decode_node_state(r: &mut Reader<'_>) -> Result<NodeState, Malformed> {
    let part = r.u32()?;
    let flags = r.u8()?;
    let count = r.u32()? as usize;
    // A topic takes at least 3 bytes, a record at least 27: counts are checked against
    // what is left before anything is allocated.
    let mut topics = Vec::with_capacity(count.min(r.remaining() / 3));
    for _ in 0..count {
        let bits = r.u8()?;
        let key = TopicKey::new(r.str16()?, bits & 1 != 0);
        topics.push(StateEntry {
            key,
            here: bits & 2 != 0,
            reported: bits & 4 != 0,
        });
    }
    let count = r.u32()? as usize;
    let mut records = Vec::with_capacity(count.min(r.remaining() / 27));
    for _ in 0..count {
        let private = r.u8()? != 0;
        let key = TopicKey::new(r.str16()?, private);
        let presence_key = r.str16()?.to_owned();
        records.push((key, presence_key, record(r)?));
    }
    Ok(NodeState {
        part,
        last: flags & LAST != 0,
        ask: flags & ASK != 0,
        topics,
        records,
    })
}

/// Collects a node's state parts until the last one.
#[derive(Debug, Default)]
pub struct Parts {
    by_node: ahash::AHashMap<u64, NodeState>,
}

impl Parts {
    /// Adds a part from `node`; the whole state once its last part arrived. A part out of
    /// order (one was lost) drops what was collected: the node's next state starts over.
    pub fn add(&mut self, node: u64, part: NodeState) -> Result<Option<NodeState>, u32> {
        let collected = match part.part {
            0 => NodeState {
                ask: part.ask,
                ..NodeState::default()
            },
            n => match self.by_node.remove(&node) {
                Some(c) if c.part + 1 == n => c,
                _ => return Err(n),
            },
        };
        let mut collected = collected;
        collected.part = part.part;
        collected.topics.extend(part.topics);
        collected.records.extend(part.records);
        if part.last {
            collected.last = true;
            return Ok(Some(collected));
        }
        self.by_node.insert(node, collected);
        Ok(None)
    }

    /// Forgets a dead node's partial state.
    pub fn forget(&mut self, node: u64) {
        self.by_node.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::envelope::decode;

    fn rec(i: u64) -> Record {
        let mut meta = Map::new();
        meta.insert("server".into(), Value::Bool(true));
        meta.insert("n".into(), Value::from(i));
        Record {
            holder: 7,
            expires_ms: 1_000 + i,
            phx_ref: format!("F{i}"),
            meta,
        }
    }

    #[test]
    fn small_envelopes_round_trip() {
        let key = TopicKey::new("realtime:room", true);
        for (bytes, body) in [
            (encode_occupancy(3, &key, true), Body::Occupancy { occupied: true }),
            (encode_reported(3, &key, false), Body::Reported { occupied: false }),
            (
                encode_server(3, &key, "dj", Some(&rec(1))),
                Body::ServerSet {
                    presence_key: "dj".into(),
                    record: rec(1),
                },
            ),
            (
                encode_server(3, &key, "dj", None),
                Body::ServerDel {
                    presence_key: "dj".into(),
                },
            ),
        ] {
            let env = decode(&bytes.expect("encodes")).expect("decodes");
            assert_eq!((env.origin, &env.key, env.body), (3, &key, body));
        }
    }

    #[test]
    fn a_large_state_goes_in_parts_that_add_up_to_it() {
        let topics: Vec<StateEntry> = (0..20_000)
            .map(|i| StateEntry {
                key: TopicKey::new(&format!("realtime:topic-{i:08}-{}", "x".repeat(20)), i % 3 == 0),
                here: i % 2 == 0,
                reported: i % 5 == 0,
            })
            .collect();
        let records: Vec<_> = (0..50)
            .map(|i| (TopicKey::new("realtime:desk", false), format!("k{i}"), rec(i)))
            .collect();
        let parts = encode_node_state(9, true, &topics, &records);
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut collect = Parts::default();
        let mut whole = None;
        for p in &parts {
            assert!(p.len() <= PART_BYTES + 64);
            let env = decode(p).expect("decodes");
            let Body::NodeState(state) = env.body else {
                panic!("not a node state");
            };
            whole = collect.add(9, state).expect("in order");
        }
        let whole = whole.expect("complete");
        assert!(whole.ask);
        assert_eq!(whole.topics, topics);
        assert_eq!(whole.records, records);
        // A lost part: the rest is refused until the next first part.
        let env = decode(&parts[1]).expect("decodes");
        let Body::NodeState(second) = env.body else {
            panic!("not a node state");
        };
        assert_eq!(collect.add(9, second), Err(1));
        let empty = encode_node_state(9, false, &[], &[]);
        assert_eq!(empty.len(), 1, "an empty state is one part");
    }

    #[test]
    fn truncated_states_are_refused_without_panicking() {
        let topics = vec![StateEntry {
            key: TopicKey::new("realtime:a", false),
            here: true,
            reported: true,
        }];
        let records = vec![(TopicKey::new("realtime:a", false), "k".to_owned(), rec(1))];
        let whole = encode_node_state(1, false, &topics, &records).remove(0);
        for len in 0..whole.len() {
            assert!(decode(&whole.slice(..len)).is_err(), "cut at {len}");
        }
        for i in 0..whole.len() {
            let mut v = whole.to_vec();
            v[i] = 0xff;
            let _ = decode(&Bytes::from(v));
        }
    }
}
