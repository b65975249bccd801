//! How a published message crosses the engine between nodes: one binary envelope per
//! message, built once by the node it was published on. Receivers deliver it to their
//! own members; the origin already delivered it locally and skips its own copy.
//!
//! Layout (integers little-endian; `str16` = u16 length + UTF-8, `bytes32` = u32 length +
//! bytes):
//!
//! ```text
//! u8 version (1) · u8 kind · u64 origin node · u8 flags · str16 topic · body
//! kind 1, broadcast:  [str16 stored id] · [i64 kept at · str16 kept id]
//!                     · u8 tag (0 map, 1 user JSON, 2 user binary)
//!                     map:  rest = the map's JSON text
//!                     user: str16 event · [bytes32 metadata] · rest = body
//! kind 2, presence:   u8 (0 delta, 1 full state) · u64 replica
//!                     delta: u64 from · u64 to · entries · u32 count · u64 tag…
//!                     full:  u64 clock · entries
//!                     entries: u32 count · (u64 tag · str16 key · bytes32 meta JSON)…
//! kind 3, sync request (send me your full state of the topic): u64 target (0 = every node)
//! kind 4, heartbeat (no topic, no body)
//! kind 5, row changes relayed by the leader (no topic): see [`super::rows`]
//! kind 6, the leader's replication streams (no topic): u8 Postgres Changes · u8 Broadcast
//!         from Database (0 starting, 1 waiting for publication, 2 streaming, 3 down, 4 failed)
//! kind 7, history request (send me your public history of the topic): u64 request · i64 since ms
//! kind 8, history answer: u64 request · u32 count · stored messages (see [`super::history`])
//! kind 9, occupancy (the origin got its first or lost its last member): u8 occupied
//! kind 10, reported (the topic's reporter sent channel.occupied/vacated): u8 occupied
//! kind 11, server presence record: str16 key · u64 holder · u64 expires ms · str16 phx_ref
//!          · bytes32 meta JSON
//! kind 12, server presence record removed: str16 key
//! kind 13, a node's state (no topic): see [`super::state_wire`]
//! ```
//!
//! A heartbeat may carry one more byte, 1 when its node reports (older nodes sent none).
//!
//! flags: 1 private topic, 2 stored id present, 4 metadata present, 8 kept in the public
//! history (`REPLAY_PUBLIC`) under that id and time (unix µs). The sender's channel
//! (for `self: false`) is not carried: channel ids are per process, and the sender is on
//! the origin, which does not deliver its own envelope again.

use bytes::{BufMut, Bytes, BytesMut};
use realtime_protocol::{BroadcastMessage, Encoding};

use std::sync::Arc;

use super::rows::{self, Relayed};
use super::sequence::{Ask, Run, Span};
use super::state_wire::{self, NodeState};
use crate::fanout::TopicKey;
use crate::observability::state::StreamState;
use crate::presence::server::Record;
use crate::presence::state::{Delta, FullState, LocalChanges, Meta, ReplicaId, TaggedEntry};
use crate::publish::history::Stored;
use crate::replication::Batch;

const VERSION: u8 = 1;
const KIND_BROADCAST: u8 = 1;
const KIND_PRESENCE: u8 = 2;
const KIND_SYNC_REQUEST: u8 = 3;
const KIND_HEARTBEAT: u8 = 4;
const KIND_CHANGES: u8 = 5;
const KIND_STREAMS: u8 = 6;
pub(super) const KIND_HISTORY_REQUEST: u8 = 7;
pub(super) const KIND_HISTORY_ANSWER: u8 = 8;
pub(super) const KIND_OCCUPANCY: u8 = 9;
pub(super) const KIND_REPORTED: u8 = 10;
pub(super) const KIND_SERVER_SET: u8 = 11;
pub(super) const KIND_SERVER_DEL: u8 = 12;
pub(super) const KIND_NODE_STATE: u8 = 13;
/// Row changes and stream states with the leader's sequence (5 and 6 are read without).
const KIND_NUMBERED_CHANGES: u8 = 14;
const KIND_LEADER_STREAMS: u8 = 15;
const KIND_CHANGES_REQUEST: u8 = 16;

const PRESENCE_DELTA: u8 = 0;
const PRESENCE_FULL: u8 = 1;

const PRIVATE: u8 = 1;
const STORED_ID: u8 = 2;
const METADATA: u8 = 4;
const KEPT: u8 = 8;

pub(super) const TAG_MAP: u8 = 0;
pub(super) const TAG_USER_JSON: u8 = 1;
pub(super) const TAG_USER_BINARY: u8 = 2;

/// A message between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node it was sent by (its incarnation id, also its presence replica id).
    pub origin: u64,
    /// Its topic (empty for a heartbeat).
    pub key: TopicKey,
    /// What it carries.
    pub body: Body,
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A broadcast published on the origin.
    Broadcast {
        /// The `realtime.messages` row id of a stored message (replayed copies are skipped).
        stored_id: Option<String>,
        /// Kept in the origin's public history as (id, unix µs).
        kept: Option<(String, i64)>,
        /// The message.
        msg: BroadcastMessage,
    },
    /// The origin's presence changes of the topic.
    Presence(LocalChanges),
    /// The origin asks for full states of the topic: from `target` only, or from every
    /// node (`None`).
    SyncRequest { target: Option<u64> },
    /// The origin is alive, and reports (may be a topic's reporter) or not yet.
    Heartbeat { ready: bool },
    /// The origin got its first member on the topic (`true`) or lost its last.
    Occupancy { occupied: bool },
    /// The topic's reporter sent `channel.occupied` (`true`) or `channel.vacated`.
    Reported { occupied: bool },
    /// A server-set presence record of the topic, as changed on the origin.
    ServerSet {
        /// Its presence key.
        presence_key: String,
        /// The record.
        record: Record,
    },
    /// A server-set presence record of the topic was removed on the origin.
    ServerDel { presence_key: String },
    /// A part of the origin's state (see [`super::state_wire`]).
    NodeState(NodeState),
    /// Row changes streamed by the origin, the leader, numbered (term, sequence) in its
    /// run (`None`: from a node that does not number them).
    Changes {
        numbered: Option<(u32, u64)>,
        relayed: Relayed,
    },
    /// The leader's replication streams: Postgres Changes, Broadcast from Database, and
    /// the batches it keeps for resending.
    Streams(StreamState, StreamState, Option<Span>),
    /// The origin asks a leader to resend batches of its run.
    ChangesRequest(Ask),
    /// The origin replays the topic's public history since `since_ms`: each node answers
    /// with what it keeps.
    HistoryRequest { request: u64, since_ms: i64 },
    /// A node's public history of the topic, for the origin's request.
    HistoryAnswer { request: u64, entries: Vec<Stored> },
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Written by a newer node (a rolling upgrade): skipped, not an error of this node.
    UnknownVersion(u8),
    /// Truncated or inconsistent bytes.
    Invalid(&'static str),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::UnknownVersion(v) => write!(f, "envelope version {v} is not known to this node"),
            Malformed::Invalid(why) => write!(f, "malformed envelope: {why}"),
        }
    }
}

pub(super) fn header(out: &mut BytesMut, kind: u8, origin: u64, flags: u8, key: &TopicKey) -> Option<()> {
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u64_le(origin);
    out.put_u8(flags | if key.private { PRIVATE } else { 0 });
    put_str16(out, &key.topic)
}

/// Encodes `origin`'s presence changes of a topic. Fails for a presence key over 65,535
/// bytes.
pub fn encode_presence(origin: u64, key: &TopicKey, changes: &LocalChanges) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(64 + key.topic.len());
    header(&mut out, KIND_PRESENCE, origin, 0, key)?;
    match changes {
        LocalChanges::Delta(d) => {
            out.put_u8(PRESENCE_DELTA);
            out.put_u64_le(d.replica.0);
            out.put_u64_le(d.from);
            out.put_u64_le(d.to);
            put_entries(&mut out, &d.joins)?;
            out.put_u32_le(u32::try_from(d.leaves.len()).ok()?);
            for tag in &d.leaves {
                out.put_u64_le(*tag);
            }
        }
        LocalChanges::Full(f) => {
            out.put_u8(PRESENCE_FULL);
            out.put_u64_le(f.replica.0);
            out.put_u64_le(f.clock);
            put_entries(&mut out, &f.entries)?;
        }
    }
    Some(out.freeze())
}

fn put_entries(out: &mut BytesMut, entries: &[TaggedEntry]) -> Option<()> {
    out.put_u32_le(u32::try_from(entries.len()).ok()?);
    for e in entries {
        out.put_u64_le(e.clock);
        put_str16(out, &e.key)?;
        out.put_u32_le(u32::try_from(e.meta.json.len()).ok()?);
        out.put_slice(e.meta.json.as_bytes());
    }
    Some(())
}

/// Encodes a request for full states of a topic (from `target` only, or from every node).
pub fn encode_sync_request(origin: u64, key: &TopicKey, target: Option<u64>) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(32 + key.topic.len());
    header(&mut out, KIND_SYNC_REQUEST, origin, 0, key)?;
    out.put_u64_le(target.unwrap_or(0));
    Some(out.freeze())
}

pub(super) fn node_header(out: &mut BytesMut, kind: u8, origin: u64) {
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u64_le(origin);
    out.put_u8(0);
    out.put_u16_le(0);
}

/// Encodes a batch of row changes relayed by the leader `origin`, numbered `seq` in its
/// `term`.
pub fn encode_changes(origin: u64, (term, seq): (u32, u64), batch: &Batch, offsets: &[usize]) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(76 + batch.changes.len() * 64);
    node_header(&mut out, KIND_NUMBERED_CHANGES, origin);
    out.put_u32_le(term);
    out.put_u64_le(seq);
    rows::encode(&mut out, batch, offsets)?;
    Some(out.freeze())
}

/// Encodes the leader's stream states and what it keeps for resending.
pub fn encode_streams(origin: u64, postgres_changes: StreamState, db_broadcast: StreamState, span: Span) -> Bytes {
    let mut out = BytesMut::with_capacity(35);
    node_header(&mut out, KIND_LEADER_STREAMS, origin);
    out.put_u8(state_code(postgres_changes));
    out.put_u8(state_code(db_broadcast));
    out.put_u32_le(span.term);
    out.put_u64_le(span.first);
    out.put_u64_le(span.last);
    out.freeze()
}

/// Encodes `origin`'s request to a leader to resend batches.
pub fn encode_changes_request(origin: u64, ask: Ask) -> Bytes {
    let mut out = BytesMut::with_capacity(44);
    node_header(&mut out, KIND_CHANGES_REQUEST, origin);
    out.put_u64_le(ask.run.origin);
    out.put_u32_le(ask.run.term);
    out.put_u64_le(ask.from);
    out.put_u64_le(ask.to);
    out.freeze()
}

fn state_code(s: StreamState) -> u8 {
    match s {
        StreamState::Starting => 0,
        StreamState::WaitingForPublication => 1,
        StreamState::Streaming => 2,
        StreamState::Down => 3,
        StreamState::Failed => 4,
    }
}

fn state(code: u8) -> Result<StreamState, Malformed> {
    Ok(match code {
        0 => StreamState::Starting,
        1 => StreamState::WaitingForPublication,
        2 => StreamState::Streaming,
        3 => StreamState::Down,
        4 => StreamState::Failed,
        _ => return Err(Malformed::Invalid("unknown stream state")),
    })
}

/// Encodes `origin`'s heartbeat; `ready`: it reports.
pub fn encode_heartbeat(origin: u64, ready: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(14);
    node_header(&mut out, KIND_HEARTBEAT, origin);
    out.put_u8(u8::from(ready));
    out.freeze()
}

/// Encodes a broadcast published on `origin`. Fails only for a topic, event or stored id
/// longer than 65,535 bytes (far beyond the server's limits).
pub fn encode(
    origin: u64,
    key: &TopicKey,
    stored_id: Option<&str>,
    kept: Option<(&str, i64)>,
    msg: &BroadcastMessage,
) -> Option<Bytes> {
    let mut flags = 0;
    if stored_id.is_some() {
        flags |= STORED_ID;
    }
    if kept.is_some() {
        flags |= KEPT;
    }
    if let BroadcastMessage::User { metadata: Some(_), .. } = msg {
        flags |= METADATA;
    }
    let body_len = match msg {
        BroadcastMessage::Map(map) => map.len(),
        BroadcastMessage::User {
            event, metadata, body, ..
        } => event.len() + metadata.as_ref().map_or(0, |m| m.len() + 4) + body.len() + 2,
    };
    let mut out = BytesMut::with_capacity(16 + key.topic.len() + stored_id.map_or(0, |s| s.len() + 2) + body_len);
    header(&mut out, KIND_BROADCAST, origin, flags, key)?;
    if let Some(id) = stored_id {
        put_str16(&mut out, id)?;
    }
    if let Some((id, at_us)) = kept {
        out.put_i64_le(at_us);
        put_str16(&mut out, id)?;
    }
    match msg {
        BroadcastMessage::Map(map) => {
            out.put_u8(TAG_MAP);
            out.put_slice(map);
        }
        BroadcastMessage::User {
            event,
            metadata,
            encoding,
            body,
        } => {
            out.put_u8(match encoding {
                Encoding::Json => TAG_USER_JSON,
                Encoding::Binary => TAG_USER_BINARY,
            });
            put_str16(&mut out, event)?;
            if let Some(metadata) = metadata {
                out.put_u32_le(u32::try_from(metadata.len()).ok()?);
                out.put_slice(metadata);
            }
            out.put_slice(body);
        }
    }
    Some(out.freeze())
}

/// Reads an envelope; the payload parts share `bytes` (no copy).
pub fn decode(bytes: &Bytes) -> Result<Envelope, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(Malformed::UnknownVersion(version));
    }
    let kind = r.u8()?;
    let origin = r.u64()?;
    let flags = r.u8()?;
    let key = TopicKey::new(r.str16()?, flags & PRIVATE != 0);
    let body = match kind {
        KIND_BROADCAST => broadcast(&mut r, flags)?,
        KIND_PRESENCE => Body::Presence(presence(&mut r)?),
        KIND_SYNC_REQUEST => Body::SyncRequest {
            target: Some(r.u64()?).filter(|t| *t != 0),
        },
        KIND_HEARTBEAT => Body::Heartbeat {
            ready: r.remaining() > 0 && r.u8()? == 1,
        },
        KIND_OCCUPANCY => Body::Occupancy { occupied: r.u8()? == 1 },
        KIND_REPORTED => Body::Reported { occupied: r.u8()? == 1 },
        KIND_SERVER_SET => state_wire::decode_server_set(&mut r)?,
        KIND_SERVER_DEL => Body::ServerDel {
            presence_key: r.str16()?.to_owned(),
        },
        KIND_NODE_STATE => Body::NodeState(state_wire::decode_node_state(&mut r)?),
        KIND_CHANGES => Body::Changes {
            numbered: None,
            relayed: rows::decode(&mut r)?,
        },
        KIND_NUMBERED_CHANGES => Body::Changes {
            numbered: Some((r.u32()?, r.u64()?)),
            relayed: rows::decode(&mut r)?,
        },
        KIND_STREAMS => Body::Streams(state(r.u8()?)?, state(r.u8()?)?, None),
        KIND_LEADER_STREAMS => Body::Streams(
            state(r.u8()?)?,
            state(r.u8()?)?,
            Some(Span {
                term: r.u32()?,
                first: r.u64()?,
                last: r.u64()?,
            }),
        ),
        KIND_CHANGES_REQUEST => Body::ChangesRequest(Ask {
            run: Run {
                origin: r.u64()?,
                term: r.u32()?,
            },
            from: r.u64()?,
            to: r.u64()?,
        }),
        KIND_HISTORY_REQUEST => Body::HistoryRequest {
            request: r.u64()?,
            since_ms: r.u64()? as i64,
        },
        KIND_HISTORY_ANSWER => super::history::decode_answer(&mut r)?,
        _ => return Err(Malformed::Invalid("unknown kind")),
    };
    Ok(Envelope { origin, key, body })
}

fn presence(r: &mut Reader<'_>) -> Result<LocalChanges, Malformed> {
    let variant = r.u8()?;
    let replica = ReplicaId(r.u64()?);
    match variant {
        PRESENCE_DELTA => {
            let from = r.u64()?;
            let to = r.u64()?;
            let joins = entries(r)?;
            let count = r.u32()? as usize;
            // Each leave is 8 bytes: a count beyond what is left is a lie, not a reason to allocate.
            let mut leaves = Vec::with_capacity(count.min(r.remaining() / 8));
            for _ in 0..count {
                leaves.push(r.u64()?);
            }
            Ok(LocalChanges::Delta(Delta {
                replica,
                from,
                to,
                joins,
                leaves,
            }))
        }
        PRESENCE_FULL => {
            let clock = r.u64()?;
            let entries = entries(r)?;
            Ok(LocalChanges::Full(FullState {
                replica,
                clock,
                entries,
            }))
        }
        _ => Err(Malformed::Invalid("unknown presence variant")),
    }
}

fn entries(r: &mut Reader<'_>) -> Result<Vec<TaggedEntry>, Malformed> {
    let count = r.u32()? as usize;
    // An entry takes at least 14 bytes.
    let mut out = Vec::with_capacity(count.min(r.remaining() / 14));
    for _ in 0..count {
        let clock = r.u64()?;
        let key: Arc<str> = Arc::from(r.str16()?);
        let len = r.u32()? as usize;
        let json = r.take(len)?;
        let json = std::str::from_utf8(&json).map_err(|_| Malformed::Invalid("meta not UTF-8"))?;
        let meta = Meta::from_json(json).ok_or(Malformed::Invalid("meta is not a presence meta"))?;
        out.push(TaggedEntry {
            clock,
            key,
            meta: Arc::new(meta),
        });
    }
    Ok(out)
}

fn broadcast(r: &mut Reader<'_>, flags: u8) -> Result<Body, Malformed> {
    let stored_id = if flags & STORED_ID != 0 {
        Some(r.str16()?.to_owned())
    } else {
        None
    };
    let kept = if flags & KEPT != 0 {
        let at_us = r.u64()? as i64;
        Some((r.str16()?.to_owned(), at_us))
    } else {
        None
    };
    let tag = r.u8()?;
    let msg = match tag {
        TAG_MAP => BroadcastMessage::Map(r.rest()),
        TAG_USER_JSON | TAG_USER_BINARY => {
            let event = r.str16()?.to_owned();
            let metadata = if flags & METADATA != 0 {
                let len = r.u32()? as usize;
                Some(r.take(len)?)
            } else {
                None
            };
            BroadcastMessage::User {
                event,
                metadata,
                encoding: if tag == TAG_USER_JSON {
                    Encoding::Json
                } else {
                    Encoding::Binary
                },
                body: r.rest(),
            }
        }
        _ => return Err(Malformed::Invalid("unknown message tag")),
    };
    Ok(Body::Broadcast { stored_id, kept, msg })
}

pub(super) fn put_str16(out: &mut BytesMut, s: &str) -> Option<()> {
    out.put_u16_le(u16::try_from(s.len()).ok()?);
    out.put_slice(s.as_bytes());
    Some(())
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a Bytes,
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, len: usize) -> Result<Bytes, Malformed> {
        let end = self.at.checked_add(len).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(Malformed::Invalid("truncated"))?;
        let out = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let taken = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&taken);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn str16(&mut self) -> Result<&'a str, Malformed> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let start = self.at;
        self.take(len)?;
        let bytes: &'a Bytes = self.bytes;
        std::str::from_utf8(&bytes[start..start + len]).map_err(|_| Malformed::Invalid("not UTF-8"))
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(super) fn rest(&mut self) -> Bytes {
        let out = self.bytes.slice(self.at..);
        self.at = self.bytes.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: TopicKey, stored_id: Option<&str>, msg: BroadcastMessage) {
        let bytes = encode(42, &key, stored_id, None, &msg).expect("encodes");
        let env = decode(&bytes).expect("decodes");
        assert_eq!(
            env,
            Envelope {
                origin: 42,
                key,
                body: Body::Broadcast {
                    stored_id: stored_id.map(str::to_owned),
                    kept: None,
                    msg
                }
            }
        );
    }

    #[test]
    fn every_message_shape_round_trips() {
        round_trip(
            TopicKey::new("realtime:room", false),
            None,
            BroadcastMessage::Map(Bytes::from_static(br#"{"type":"broadcast","event":"e","payload":{}}"#)),
        );
        round_trip(
            TopicKey::new("realtime:room", true),
            Some("5f0c"),
            BroadcastMessage::User {
                event: "ev".into(),
                metadata: Some(Bytes::from_static(br#"{"id":"5f0c"}"#)),
                encoding: Encoding::Json,
                body: Bytes::from_static(b"{\"a\":1}"),
            },
        );
        round_trip(
            TopicKey::new("realtime:bin", false),
            None,
            BroadcastMessage::User {
                event: "b".into(),
                metadata: None,
                encoding: Encoding::Binary,
                body: Bytes::from_static(&[0, 159, 146, 150, 255]),
            },
        );
    }

    #[test]
    fn presence_sync_and_heartbeat_round_trip() {
        let key = TopicKey::new("realtime:lobby", true);
        let meta = |r: &str| Arc::new(Meta::new(r.into(), None, serde_json::Map::new()));
        let delta = LocalChanges::Delta(Delta {
            replica: ReplicaId(9),
            from: 3,
            to: 5,
            joins: vec![TaggedEntry {
                clock: 4,
                key: Arc::from("user-1"),
                meta: meta("F1"),
            }],
            leaves: vec![1, 2],
        });
        let full = LocalChanges::Full(FullState {
            replica: ReplicaId(9),
            clock: 5,
            entries: vec![TaggedEntry {
                clock: 4,
                key: Arc::from("user-1"),
                meta: meta("F1"),
            }],
        });
        for changes in [delta, full] {
            let env = decode(&encode_presence(9, &key, &changes).expect("encodes")).expect("decodes");
            assert_eq!((env.origin, &env.key, env.body), (9, &key, Body::Presence(changes)));
        }
        let env = decode(&encode_sync_request(9, &key, Some(4)).expect("encodes")).expect("decodes");
        assert_eq!(env.body, Body::SyncRequest { target: Some(4) });
        let env = decode(&encode_sync_request(9, &key, None).expect("encodes")).expect("decodes");
        assert_eq!(env.body, Body::SyncRequest { target: None });
        let env = decode(&encode_heartbeat(9, true)).expect("decodes");
        assert_eq!((env.origin, env.body), (9, Body::Heartbeat { ready: true }));
        let old = decode(&encode_heartbeat(9, false).slice(..13)).expect("decodes");
        assert_eq!(
            old.body,
            Body::Heartbeat { ready: false },
            "a heartbeat without the byte"
        );
    }

    #[test]
    fn numbered_changes_leader_spans_and_resend_requests_round_trip() {
        let span = Span {
            term: 3,
            first: 10,
            last: 12,
        };
        let env = decode(&encode_streams(9, StreamState::Streaming, StreamState::Down, span)).expect("decodes");
        assert_eq!(
            (env.origin, env.body),
            (9, Body::Streams(StreamState::Streaming, StreamState::Down, Some(span)))
        );
        let ask = Ask {
            run: Run { origin: 5, term: 3 },
            from: 11,
            to: u64::MAX,
        };
        let env = decode(&encode_changes_request(9, ask)).expect("decodes");
        assert_eq!(env.body, Body::ChangesRequest(ask));
        let bytes = encode_changes(9, (3, 12), &Batch::default(), &[]).expect("encodes");
        let Body::Changes { numbered, relayed } = decode(&bytes).expect("decodes").body else {
            panic!("changes expected")
        };
        assert_eq!((numbered, relayed.batch), (Some((3, 12)), Batch::default()));
        for n in 0..bytes.len() {
            assert!(decode(&bytes.slice(..n)).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_refused_without_panicking() {
        let msg = BroadcastMessage::User {
            event: "ev".into(),
            metadata: Some(Bytes::from_static(b"{}")),
            encoding: Encoding::Json,
            body: Bytes::from_static(b"[1,2]"),
        };
        let whole = encode(7, &TopicKey::new("realtime:t", true), Some("id"), None, &msg).expect("encodes");
        for len in 0..whole.len() {
            // Only the body may be cut short (it is "the rest"); anything before it must fail.
            let _ = decode(&whole.slice(..len));
        }
        for i in 0..whole.len() {
            for byte in [0, 1, 0x7f, 0xff] {
                let mut v = whole.to_vec();
                v[i] = byte;
                let _ = decode(&Bytes::from(v));
            }
        }
        let presence = LocalChanges::Full(FullState {
            replica: ReplicaId(1),
            clock: 2,
            entries: vec![TaggedEntry {
                clock: 1,
                key: Arc::from("k"),
                meta: Arc::new(Meta::new("F".into(), None, serde_json::Map::new())),
            }],
        });
        let whole = encode_presence(1, &TopicKey::new("realtime:t", false), &presence).expect("encodes");
        for len in 0..whole.len() {
            assert!(
                decode(&whole.slice(..len)).is_err(),
                "a presence envelope cut at {len} is refused"
            );
        }
        for i in 0..whole.len() {
            for byte in [0, 1, 0x7f, 0xff] {
                let mut v = whole.to_vec();
                v[i] = byte;
                let _ = decode(&Bytes::from(v));
            }
        }
        assert_eq!(decode(&Bytes::from_static(&[9])), Err(Malformed::UnknownVersion(9)));
        assert!(matches!(decode(&Bytes::new()), Err(Malformed::Invalid(_))));
    }
}
