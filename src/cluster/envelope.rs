//! How a published message crosses the engine between nodes: one binary envelope per
//! message, built once by the node it was published on. Receivers deliver it to their
//! own members; the origin already delivered it locally and skips its own copy.
//!
//! Layout (integers little-endian; `str16` = u16 length + UTF-8, `bytes32` = u32 length +
//! bytes):
//!
//! ```text
//! u8 version (1) · u8 kind (1 = broadcast) · u64 origin node · u8 flags
//! str16 topic · [str16 stored id] · message
//! message: u8 tag (0 map, 1 user JSON, 2 user binary)
//!          map:  rest = the map's JSON text
//!          user: str16 event · [bytes32 metadata] · rest = body
//! ```
//!
//! flags: 1 private topic, 2 stored id present, 4 metadata present. The sender's channel
//! (for `self: false`) is not carried: channel ids are per process, and the sender is on
//! the origin, which does not deliver its own envelope again.

use bytes::{BufMut, Bytes, BytesMut};
use realtime_protocol::{BroadcastMessage, Encoding};

use crate::fanout::TopicKey;

const VERSION: u8 = 1;
const KIND_BROADCAST: u8 = 1;

const PRIVATE: u8 = 1;
const STORED_ID: u8 = 2;
const METADATA: u8 = 4;

const TAG_MAP: u8 = 0;
const TAG_USER_JSON: u8 = 1;
const TAG_USER_BINARY: u8 = 2;

/// A broadcast as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node it was published on (its incarnation id).
    pub origin: u64,
    /// Its topic.
    pub key: TopicKey,
    /// The `realtime.messages` row id of a stored message (replayed copies are skipped).
    pub stored_id: Option<String>,
    /// The message.
    pub msg: BroadcastMessage,
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

/// Encodes a broadcast published on `origin`. Fails only for a topic, event or stored id
/// longer than 65,535 bytes (far beyond the server's limits).
pub fn encode(origin: u64, key: &TopicKey, stored_id: Option<&str>, msg: &BroadcastMessage) -> Option<Bytes> {
    let mut flags = 0;
    if key.private {
        flags |= PRIVATE;
    }
    if stored_id.is_some() {
        flags |= STORED_ID;
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
    out.put_u8(VERSION);
    out.put_u8(KIND_BROADCAST);
    out.put_u64_le(origin);
    out.put_u8(flags);
    put_str16(&mut out, &key.topic)?;
    if let Some(id) = stored_id {
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
    if r.u8()? != KIND_BROADCAST {
        return Err(Malformed::Invalid("unknown kind"));
    }
    let origin = r.u64()?;
    let flags = r.u8()?;
    let topic = r.str16()?;
    let stored_id = if flags & STORED_ID != 0 {
        Some(r.str16()?.to_owned())
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
    Ok(Envelope {
        origin,
        key: TopicKey::new(topic, flags & PRIVATE != 0),
        stored_id,
        msg,
    })
}

fn put_str16(out: &mut BytesMut, s: &str) -> Option<()> {
    out.put_u16_le(u16::try_from(s.len()).ok()?);
    out.put_slice(s.as_bytes());
    Some(())
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<Bytes, Malformed> {
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

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str16(&mut self) -> Result<&'a str, Malformed> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let start = self.at;
        self.take(len)?;
        let bytes: &'a Bytes = self.bytes;
        std::str::from_utf8(&bytes[start..start + len]).map_err(|_| Malformed::Invalid("not UTF-8"))
    }

    fn rest(&mut self) -> Bytes {
        let out = self.bytes.slice(self.at..);
        self.at = self.bytes.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: TopicKey, stored_id: Option<&str>, msg: BroadcastMessage) {
        let bytes = encode(42, &key, stored_id, &msg).expect("encodes");
        let env = decode(&bytes).expect("decodes");
        assert_eq!(
            env,
            Envelope {
                origin: 42,
                key,
                stored_id: stored_id.map(str::to_owned),
                msg
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
    fn every_truncation_and_corruption_is_refused_without_panicking() {
        let msg = BroadcastMessage::User {
            event: "ev".into(),
            metadata: Some(Bytes::from_static(b"{}")),
            encoding: Encoding::Json,
            body: Bytes::from_static(b"[1,2]"),
        };
        let whole = encode(7, &TopicKey::new("realtime:t", true), Some("id"), &msg).expect("encodes");
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
        assert_eq!(decode(&Bytes::from_static(&[9])), Err(Malformed::UnknownVersion(9)));
        assert!(matches!(decode(&Bytes::new()), Err(Malformed::Invalid(_))));
    }
}
