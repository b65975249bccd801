//! A broadcast message and its encodings for each kind of receiver (protocol.md §2.3–2.4).
//!
//! The fan-out encodes a message at most once per wire version and shares the bytes with
//! every subscriber of that version.

use bytes::Bytes;

use crate::encode::{fastlane, WireFrame};
use crate::json::push_str;
use crate::Vsn;

/// How a user broadcast payload is encoded (the type-3/4 encoding byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Raw bytes (`ArrayBuffer` in js); V1 sockets cannot carry it.
    Binary,
    /// UTF-8 JSON text.
    Json,
}

/// A broadcast, kept in the form it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastMessage {
    /// From a text push or the REST batch endpoint: the whole payload map
    /// (`{"type":"broadcast","event":…,"payload":…}`) as JSON text; every receiver gets
    /// exactly this map.
    Map(Bytes),
    /// A "user broadcast" (V2 binary push, REST single endpoint, database): receivers on
    /// V2 get binary type 4; V1 receivers get it converted to a JSON map, or nothing for a
    /// binary payload.
    User {
        /// The user event name.
        event: String,
        /// Metadata JSON object text (e.g. `{"id":"…"}`), if any.
        metadata: Option<Bytes>,
        /// Payload encoding.
        encoding: Encoding,
        /// Payload bytes (JSON text when `encoding` is JSON).
        body: Bytes,
    },
}

impl BroadcastMessage {
    /// Size of the user payload, for payload limits.
    pub fn payload_len(&self) -> usize {
        match self {
            BroadcastMessage::Map(b) => b.len(),
            BroadcastMessage::User { body, .. } => body.len(),
        }
    }

    /// The frame a receiver of version `vsn` joined to `topic` gets, or `None` when that
    /// receiver cannot take this message (binary payload on V1, or a V2 binary payload
    /// whose header strings exceed 255 bytes).
    pub fn encode(&self, vsn: Vsn, topic: &str) -> Option<WireFrame> {
        match self {
            BroadcastMessage::Map(map) => Some(fastlane(vsn, topic, "broadcast", map)),
            BroadcastMessage::User {
                event,
                metadata,
                encoding,
                body,
            } => match (vsn, encoding) {
                (Vsn::V1, Encoding::Binary) => None,
                (Vsn::V2, _) => {
                    let meta = metadata.as_deref().unwrap_or_default();
                    user_broadcast_frame(topic, event, meta, *encoding, body).or_else(|| {
                        // Too long for the one-byte lengths: JSON still reaches the client as text.
                        (*encoding == Encoding::Json)
                            .then(|| fastlane(vsn, topic, "broadcast", &json_map(event, metadata.as_deref(), body)))
                    })
                }
                (Vsn::V1, Encoding::Json) => Some(fastlane(
                    vsn,
                    topic,
                    "broadcast",
                    &json_map(event, metadata.as_deref(), body),
                )),
            },
        }
    }
}

/// `map` (a JSON object's text) with `"meta": meta` added as its last member, so that
/// JSON parsers, which keep the last of duplicate keys, see this `meta`. `None` when `map`
/// is not an object.
pub fn map_with_meta(map: &[u8], meta: &[u8]) -> Option<Vec<u8>> {
    let end = map.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let start = map.iter().position(|b| !b.is_ascii_whitespace())?;
    if map[start] != b'{' || map[end] != b'}' || end == start {
        return None;
    }
    let empty = map[start + 1..end].iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::with_capacity(map.len() + meta.len() + 10);
    out.extend_from_slice(&map[start..end]);
    out.extend_from_slice(if empty { b"\"meta\":" } else { b",\"meta\":" });
    out.extend_from_slice(meta);
    out.push(b'}');
    Some(out)
}

/// `{"event":E,"meta":M,"payload":P,"type":"broadcast"}`, the JSON form of a user broadcast.
pub fn json_map(event: &str, metadata: Option<&[u8]>, payload_json: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload_json.len() + event.len() + 64);
    buf.extend_from_slice(b"{\"event\":");
    push_str(&mut buf, event);
    if let Some(meta) = metadata.filter(|m| !m.is_empty()) {
        buf.extend_from_slice(b",\"meta\":");
        buf.extend_from_slice(meta);
    }
    buf.extend_from_slice(b",\"payload\":");
    buf.extend_from_slice(payload_json);
    buf.extend_from_slice(b",\"type\":\"broadcast\"}");
    buf
}

/// Binary type 4 (USER_BROADCAST): `04 T E M enc | topic | event | metadata | payload`.
/// `None` when a header string is longer than 255 bytes.
pub fn user_broadcast_frame(
    topic: &str,
    event: &str,
    metadata: &[u8],
    encoding: Encoding,
    payload: &[u8],
) -> Option<WireFrame> {
    let t = u8::try_from(topic.len()).ok()?;
    let e = u8::try_from(event.len()).ok()?;
    let m = u8::try_from(metadata.len()).ok()?;
    let enc = match encoding {
        Encoding::Binary => 0,
        Encoding::Json => 1,
    };
    let mut buf = Vec::with_capacity(5 + topic.len() + event.len() + metadata.len() + payload.len());
    buf.extend_from_slice(&[4, t, e, m, enc]);
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(event.as_bytes());
    buf.extend_from_slice(metadata);
    buf.extend_from_slice(payload);
    Some(WireFrame::Binary(Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_binary, Payload};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn meta_goes_last_in_the_map() {
        let m = map_with_meta(br#" {"event":"e","payload":{"a":1}} "#, br#"{"id":"x"}"#).unwrap();
        assert_eq!(m, br#"{"event":"e","payload":{"a":1},"meta":{"id":"x"}}"#);
        assert_eq!(map_with_meta(b"{ }", b"{}").unwrap(), br#"{ "meta":{}}"#);
        assert!(map_with_meta(b"[1]", b"{}").is_none());
        assert!(map_with_meta(b"", b"{}").is_none());
        assert!(map_with_meta(b"}", b"{}").is_none());
    }

    fn user(event: &str, meta: Option<&str>, encoding: Encoding, body: &[u8]) -> BroadcastMessage {
        BroadcastMessage::User {
            event: event.into(),
            metadata: meta.map(|m| Bytes::copy_from_slice(m.as_bytes())),
            encoding,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn type4_matches_server_serializer_vectors() {
        // samples/serializer-test-user_broadcast-*.hex
        let cases = [
            (
                "04050a1100746f706963757365725f6576656e747b227265706c61796564223a747275657d656667",
                Some(r#"{"replayed":true}"#),
                Encoding::Binary,
                &b"efg"[..],
            ),
            (
                "04050a0000746f706963757365725f6576656e74656667",
                None,
                Encoding::Binary,
                b"efg",
            ),
            (
                "04050a1101746f706963757365725f6576656e747b227265706c61796564223a747275657d7b2261223a2262227d",
                Some(r#"{"replayed":true}"#),
                Encoding::Json,
                br#"{"a":"b"}"#,
            ),
            (
                "04050a0001746f706963757365725f6576656e747b2261223a2262227d",
                None,
                Encoding::Json,
                br#"{"a":"b"}"#,
            ),
        ];
        for (vector, meta, enc, body) in cases {
            let f = user("user_event", meta, enc, body).encode(Vsn::V2, "topic").unwrap();
            assert_eq!(f, WireFrame::Binary(Bytes::from(hex(vector))));
        }
    }

    #[test]
    fn docs_type4_vector() {
        // samples/docs-v2-server-user_broadcast-json.hex
        let v = hex("0412072d017265616c74696d653a636861742d726f6f6d6d6573736167657b226964223a2230303635353463652d643232642d343639632d383737612d383862656634373231346133227d7b226964223a2235313365646363312d346362632d343237342d616132362d633139356637653863303930222c22636f6e74656e74223a226f69222c22757365726e616d65223a2268704b396a4e3269592d493248696f485772356d6c222c22637265617465644174223a22323032352d31312d31385432323a34343a32395a227d");
        let meta = r#"{"id":"006554ce-d22d-469c-877a-88bef47214a3"}"#;
        let body = &v[5 + 18 + 7 + 45..];
        let f = user("message", Some(meta), Encoding::Json, body)
            .encode(Vsn::V2, "realtime:chat-room")
            .unwrap();
        assert_eq!(f.bytes().as_ref(), v.as_slice());
    }

    #[test]
    fn js_push_round_trips_to_type4() {
        // recorded/realtime-js-2.119.0-vsn2.frames.jsonl: the type-3 push and the type-4 frame peers got.
        let push = hex("0301010e06000136387265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a22c3a9227d");
        let expected = hex("040e0600017265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a22c3a9227d");
        let m = decode_binary(Vsn::V2, &push).unwrap();
        let Payload::UserBroadcast {
            event, encoding, body, ..
        } = m.payload
        else {
            panic!()
        };
        let msg = user(event, None, encoding, body);
        assert_eq!(
            msg.encode(Vsn::V2, &m.topic).unwrap().bytes().as_ref(),
            expected.as_slice()
        );
    }

    #[test]
    fn user_json_reaches_v1_as_map_and_binary_does_not() {
        let f = user("cursor", None, Encoding::Json, br#"{"x":1}"#)
            .encode(Vsn::V1, "realtime:room")
            .unwrap();
        assert_eq!(
            f.bytes().as_ref(),
            br#"{"event":"broadcast","payload":{"event":"cursor","payload":{"x":1},"type":"broadcast"},"ref":null,"topic":"realtime:room"}"#
        );
        assert!(user("bin", None, Encoding::Binary, &[1, 2, 3, 255])
            .encode(Vsn::V1, "realtime:room")
            .is_none());
    }

    #[test]
    fn db_broadcast_reaches_v1_with_meta() {
        // samples/db-broadcast_changes-insert.txt (key order differs; compare as values)
        let payload = r#"{"id":"00000000-0000-0000-0000-0000000000aa","old_record":null,"operation":"INSERT","record":{"details":"v","id":1},"schema":"public","table":"test_table"}"#;
        let meta = r#"{"id":"00000000-0000-0000-0000-0000000000aa"}"#;
        let f = user("INSERT", Some(meta), Encoding::Json, payload.as_bytes())
            .encode(Vsn::V1, "realtime:topic")
            .unwrap();
        let got: serde_json::Value = serde_json::from_slice(f.bytes()).unwrap();
        let want: serde_json::Value = serde_json::from_str(r#"{"event":"broadcast","payload":{"event":"INSERT","meta":{"id":"00000000-0000-0000-0000-0000000000aa"},"payload":{"id":"00000000-0000-0000-0000-0000000000aa","old_record":null,"operation":"INSERT","record":{"details":"v","id":1},"schema":"public","table":"test_table"},"type":"broadcast"},"ref":null,"topic":"realtime:topic"}"#).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn text_map_passes_through_both_versions() {
        // protocol.md §13 item 25
        let map = Bytes::from_static(br#"{"type":"broadcast","event":"e","payload":{"a":1}}"#);
        let m = BroadcastMessage::Map(map);
        assert_eq!(
            m.encode(Vsn::V2, "realtime:room").unwrap().bytes().as_ref(),
            br#"[null,null,"realtime:room","broadcast",{"type":"broadcast","event":"e","payload":{"a":1}}]"#
        );
        assert_eq!(
            m.encode(Vsn::V1, "realtime:room").unwrap().bytes().as_ref(),
            br#"{"event":"broadcast","payload":{"type":"broadcast","event":"e","payload":{"a":1}},"ref":null,"topic":"realtime:room"}"#
        );
    }

    #[test]
    fn long_topic_falls_back_to_text_for_json_and_drops_binary() {
        let topic = format!("realtime:{}", "x".repeat(300));
        let json = user("e", None, Encoding::Json, b"{}").encode(Vsn::V2, &topic).unwrap();
        assert!(matches!(json, WireFrame::Text(_)));
        assert!(user("e", None, Encoding::Binary, b"\x01")
            .encode(Vsn::V2, &topic)
            .is_none());
    }
}
