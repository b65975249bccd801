//! Decoding one inbound WebSocket message into a Phoenix envelope.
//!
//! Text payloads stay raw ([`serde_json::value::RawValue`] borrowed from the frame), so a
//! broadcast is forwarded by splicing the client's bytes, never parsed and re-serialized.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broadcast::Encoding;
use crate::Vsn;

/// Why a frame was dropped. The connection stays up; the server logs it as
/// `MalformedWebSocketMessage`, as Supabase does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON, or not the shape this version expects (e.g. a V1 object on a V2 socket).
    InvalidJson(String),
    /// A binary frame on a V1 socket.
    BinaryOnV1,
    /// Binary frame too short for the lengths its header announces.
    Truncated,
    /// A binary frame kind clients never send (only type 3 is accepted).
    UnsupportedBinaryKind(u8),
    /// A binary header string that is not UTF-8.
    InvalidUtf8,
    /// Encoding byte other than 0 (binary) or 1 (JSON).
    UnknownEncoding(u8),
    /// A JSON-encoded binary payload that is not valid JSON.
    InvalidJsonPayload,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::InvalidJson(e) => write!(f, "invalid JSON frame: {e}"),
            ProtocolError::BinaryOnV1 => f.write_str("binary frame on a vsn 1.0.0 socket"),
            ProtocolError::Truncated => f.write_str("binary frame shorter than its header says"),
            ProtocolError::UnsupportedBinaryKind(k) => write!(f, "unsupported binary kind {k}"),
            ProtocolError::InvalidUtf8 => f.write_str("binary header field is not UTF-8"),
            ProtocolError::UnknownEncoding(e) => write!(f, "unknown payload encoding {e}"),
            ProtocolError::InvalidJsonPayload => f.write_str("JSON payload is not valid JSON"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The payload of an inbound message.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Raw JSON text of the `payload` element of a text frame.
    Json(&'a RawValue),
    /// A V2 type-3 user broadcast push.
    UserBroadcast {
        /// The user event name.
        event: &'a str,
        /// Metadata JSON text; empty when none.
        metadata: &'a [u8],
        /// How `body` is encoded.
        encoding: Encoding,
        /// Raw payload bytes (valid JSON text when `encoding` is JSON).
        body: &'a [u8],
    },
}

/// One client message: `[join_ref, ref, topic, event, payload]` in every encoding.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The channel's join reference, if sent.
    pub join_ref: Option<Cow<'a, str>>,
    /// The message reference the reply must echo (`null` allowed).
    pub ref_: Option<Cow<'a, str>>,
    /// e.g. `realtime:room1` or `phoenix`.
    pub topic: Cow<'a, str>,
    /// e.g. `phx_join`, `broadcast`; `broadcast` for binary pushes.
    pub event: Cow<'a, str>,
    /// The payload, raw.
    pub payload: Payload<'a>,
}

/// Decodes a text frame for the socket's version.
///
/// Refused like Supabase's decoder (Jason, then Phoenix's `from_map!`) refuses them: text
/// that is not JSON, a V1 frame that is not an object, and JSON holding a `\u` escape of
/// a lone UTF-16 surrogate anywhere (serde_json rejects those in strings it decodes, but
/// not inside the raw payload, which would then reach other clients as sent).
pub fn decode_text(vsn: Vsn, text: &[u8]) -> Result<Inbound<'_>, ProtocolError> {
    let msg = decode_text_shape(vsn, text)?;
    if has_lone_surrogate(text) {
        return Err(ProtocolError::InvalidJson("lone UTF-16 surrogate escape".into()));
    }
    Ok(msg)
}

fn decode_text_shape(vsn: Vsn, text: &[u8]) -> Result<Inbound<'_>, ProtocolError> {
    match vsn {
        Vsn::V1 => {
            // serde's derived struct decoding also takes a sequence in field order;
            // Phoenix's V1 decoder only takes a map.
            if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ProtocolError::InvalidJson("a V1 frame must be a JSON object".into()));
            }
            let obj: V1Object<'_> =
                serde_json::from_slice(text).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
            Ok(Inbound {
                join_ref: obj.join_ref,
                ref_: obj.ref_,
                topic: obj.topic,
                event: obj.event,
                payload: Payload::Json(obj.payload),
            })
        }
        Vsn::V2 => {
            let arr: V2Array<'_> =
                serde_json::from_slice(text).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
            Ok(Inbound {
                join_ref: arr.0,
                ref_: arr.1,
                topic: arr.2,
                event: arr.3,
                payload: Payload::Json(arr.4),
            })
        }
    }
}

/// Decodes a binary frame. Only V2 has binary frames, and clients only send type 3
/// (user broadcast push); its event is reported as `broadcast`.
pub fn decode_binary(vsn: Vsn, bytes: &[u8]) -> Result<Inbound<'_>, ProtocolError> {
    if vsn == Vsn::V1 {
        return Err(ProtocolError::BinaryOnV1);
    }
    let kind = *bytes.first().ok_or(ProtocolError::Truncated)?;
    if kind != 3 {
        return Err(ProtocolError::UnsupportedBinaryKind(kind));
    }
    let header = bytes.get(1..7).ok_or(ProtocolError::Truncated)?;
    let (join_len, ref_len, topic_len, event_len, meta_len) = (
        usize::from(header[0]),
        usize::from(header[1]),
        usize::from(header[2]),
        usize::from(header[3]),
        usize::from(header[4]),
    );
    let encoding = match header[5] {
        0 => Encoding::Binary,
        1 => Encoding::Json,
        other => return Err(ProtocolError::UnknownEncoding(other)),
    };
    let mut rest = &bytes[7..];
    let mut take = |n: usize| -> Result<&[u8], ProtocolError> {
        if rest.len() < n {
            return Err(ProtocolError::Truncated);
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let join_ref = utf8(take(join_len)?)?;
    let ref_ = utf8(take(ref_len)?)?;
    let topic = utf8(take(topic_len)?)?;
    let event = utf8(take(event_len)?)?;
    let metadata = take(meta_len)?;
    let body = rest;
    // Receivers JSON.parse this; forwarding garbage would break their socket handler, and
    // V1 receivers get it inside a text frame, which must be UTF-8 (a client closes the
    // socket on a text frame that is not) and decode like any other. serde_json skips
    // over strings without checking their UTF-8 or surrogates, hence the explicit checks.
    if encoding == Encoding::Json
        && (std::str::from_utf8(body).is_err()
            || serde_json::from_slice::<IgnoredAny>(body).is_err()
            || has_lone_surrogate(body))
    {
        return Err(ProtocolError::InvalidJsonPayload);
    }
    Ok(Inbound {
        join_ref: Some(Cow::Borrowed(join_ref)),
        ref_: (!ref_.is_empty()).then_some(Cow::Borrowed(ref_)),
        topic: Cow::Borrowed(topic),
        event: Cow::Borrowed("broadcast"),
        payload: Payload::UserBroadcast {
            event,
            metadata,
            encoding,
            body,
        },
    })
}

/// True when `json` (text serde_json already accepted, so every escape is well formed)
/// holds a `\uD800`–`\uDFFF` escape that is not a high surrogate followed by a low one.
fn has_lone_surrogate(json: &[u8]) -> bool {
    let hex4 = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(json.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while let Some(offset) = json.get(i..).and_then(|rest| rest.iter().position(|&b| b == b'\\')) {
        let at = i + offset;
        if json.get(at + 1) != Some(&b'u') {
            // `\\`, `\"`, `\n`, ...: skip the escaped character.
            i = at + 2;
            continue;
        }
        let Some(unit) = hex4(at + 2) else { return false };
        match unit {
            0xD800..=0xDBFF => {
                let low = (json.get(at + 6..at + 8) == Some(&b"\\u"[..]))
                    .then(|| hex4(at + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return true;
                }
                i = at + 12;
            }
            0xDC00..=0xDFFF => return true,
            _ => i = at + 6,
        }
    }
    false
}

fn utf8(b: &[u8]) -> Result<&str, ProtocolError> {
    std::str::from_utf8(b).map_err(|_| ProtocolError::InvalidUtf8)
}

/// `{"topic", "event", "payload", "ref", "join_ref"?}`; other keys are ignored.
#[derive(Deserialize)]
struct V1Object<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    // Required like Phoenix's `from_map!`, but may be null.
    #[serde(rename = "ref", borrow, deserialize_with = "required_nullable")]
    ref_: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    join_ref: Option<Cow<'a, str>>,
}

fn required_nullable<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<Cow<'de, str>>::deserialize(d)
}

/// `[join_ref, ref, topic, event, payload, ...ignored]`.
struct V2Array<'a>(
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    Cow<'a, str>,
    Cow<'a, str>,
    &'a RawValue,
);

impl<'de: 'a, 'a> Deserialize<'de> for V2Array<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = V2Array<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array [join_ref, ref, topic, event, payload]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &"5 elements");
                let join_ref = seq.next_element::<Option<Cow<'a, str>>>()?.ok_or_else(|| missing(0))?;
                let ref_ = seq.next_element::<Option<Cow<'a, str>>>()?.ok_or_else(|| missing(1))?;
                let topic = seq.next_element::<Cow<'a, str>>()?.ok_or_else(|| missing(2))?;
                let event = seq.next_element::<Cow<'a, str>>()?.ok_or_else(|| missing(3))?;
                let payload = seq.next_element::<&'a RawValue>()?.ok_or_else(|| missing(4))?;
                // Phoenix ignores trailing elements.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(V2Array(join_ref, ref_, topic, event, payload))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_text_frame_keeps_payload_raw() {
        let f = br#"["6","7","realtime:room1","broadcast",{"type":"broadcast","event":"e","payload":{"a":1}}]"#;
        let m = decode_text(Vsn::V2, f).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("6"));
        assert_eq!(m.ref_.as_deref(), Some("7"));
        assert_eq!(m.topic, "realtime:room1");
        assert_eq!(m.event, "broadcast");
        let Payload::Json(p) = m.payload else { panic!() };
        assert_eq!(p.get(), r#"{"type":"broadcast","event":"e","payload":{"a":1}}"#);
    }

    #[test]
    fn v2_accepts_nulls_and_ignores_trailing_elements() {
        let m = decode_text(Vsn::V2, br#"[null,null,"phoenix","heartbeat",{},"extra",1]"#).unwrap();
        assert!(m.join_ref.is_none() && m.ref_.is_none());
        assert_eq!(m.event, "heartbeat");
    }

    #[test]
    fn v2_rejects_wrong_shapes() {
        for bad in [
            &br#"{"topic":"t","event":"e","payload":{},"ref":null}"#[..],
            br#"[null,null,"t","e"]"#,
            br#"[1,null,"t","e",{}]"#,
            br#"[null,null,null,"e",{}]"#,
            br#"not json"#,
            br#""#,
            br#"[null,null,"t","e",{}"#,
        ] {
            assert!(decode_text(Vsn::V2, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v1_object_with_and_without_join_ref() {
        let py = br#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#;
        let m = decode_text(Vsn::V1, py).unwrap();
        assert!(m.ref_.is_none());
        let js = br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"11"}"#;
        let m = decode_text(Vsn::V1, js).unwrap();
        assert_eq!(m.ref_.as_deref(), Some("11"));
        assert!(m.join_ref.is_none());
    }

    #[test]
    fn v1_rejects_arrays_and_missing_keys() {
        assert!(decode_text(Vsn::V1, br#"[null,"1","phoenix","heartbeat",{}]"#).is_err());
        assert!(decode_text(Vsn::V1, br#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#).is_err());
        assert!(decode_text(Vsn::V1, br#"{"topic":"phoenix","event":"heartbeat","ref":"1"}"#).is_err());
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let m = decode_text(Vsn::V2, br#"[null,"1","realtime:r\u00e9","x",{}]"#).unwrap();
        assert_eq!(m.topic, "realtime:r\u{e9}");
    }

    #[test]
    fn v1_takes_only_an_object() {
        // Field order as a sequence is what serde's derive would take; Phoenix does not.
        for bad in [
            &br#"["phoenix","heartbeat",{},"1"]"#[..],
            br#"["phoenix","heartbeat",{},"1",null]"#,
            br#" ["phoenix","heartbeat",{},null]"#,
        ] {
            assert!(decode_text(Vsn::V1, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let ok = decode_text(
            Vsn::V1,
            b" \r\n\t{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{},\"ref\":null}",
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn lone_surrogate_escapes_are_refused_anywhere() {
        for vsn in [Vsn::V1, Vsn::V2] {
            // `extra`: a value in an ignored place (an unknown V1 key, a trailing V2 element).
            let frame = |topic: &str, payload: &str, extra: &str| match (vsn, extra) {
                (Vsn::V1, "") => format!(r#"{{"topic":"{topic}","event":"e","payload":{payload},"ref":null}}"#),
                (Vsn::V1, _) => {
                    format!(r#"{{"topic":"{topic}","event":"e","payload":{payload},"ref":null,"x":{extra}}}"#)
                }
                (Vsn::V2, "") => format!(r#"[null,null,"{topic}","e",{payload}]"#),
                (Vsn::V2, _) => format!(r#"[null,null,"{topic}","e",{payload},{extra}]"#),
            };
            for (topic, payload, extra) in [
                (r"t\ud800", "{}", ""),
                ("t", r#"{"a":"\ud800"}"#, ""),
                ("t", r#"{"a":"\uDBFF"}"#, ""),
                ("t", r#"{"a":"\udc00"}"#, ""),
                ("t", r#"{"a":"\ud800\u0041"}"#, ""),
                ("t", r#"{"a":"\ud800\n"}"#, ""),
                ("t", r#"{"a":"x\ud83d"}"#, ""),
                ("t", r#"{"\udfff":1}"#, ""),
                ("t", r#"["\\\ud800"]"#, ""),
                ("t", "{}", r#""\ud800""#),
                ("t", "{}", r#"{"y":["\udbff"]}"#),
            ] {
                let f = frame(topic, payload, extra);
                assert!(decode_text(vsn, f.as_bytes()).is_err(), "{vsn:?} {f}");
            }
            for payload in [
                r#"{"a":"\ud83d\ude00"}"#,
                r#"{"a":"\uD83D\uDE00\u00e9"}"#,
                r#"{"a":"\\ud800"}"#,
                r#"{"a":"\\\\ud800"}"#,
                r#"{"a":"\"\\","b":"\ud7ff\ue000"}"#,
            ] {
                let f = frame("t", payload, "");
                let m = decode_text(vsn, f.as_bytes()).unwrap_or_else(|e| panic!("{vsn:?} {f}: {e}"));
                let Payload::Json(p) = m.payload else { panic!() };
                assert_eq!(p.get(), payload);
            }
        }
    }

    #[test]
    fn binary_on_v1_is_refused() {
        assert_eq!(decode_binary(Vsn::V1, &[3]).unwrap_err(), ProtocolError::BinaryOnV1);
    }

    #[test]
    fn binary_truncations_never_panic() {
        let good = hex("0301010e06000136387265616c74696d653a726f6f6d31637572736f727b2278223a312c2279223a22c3a9227d");
        for n in 0..good.len() {
            let _ = decode_binary(Vsn::V2, &good[..n]);
        }
        // Lengths larger than the frame.
        assert_eq!(
            decode_binary(Vsn::V2, &[3, 255, 255, 255, 255, 255, 1]).unwrap_err(),
            ProtocolError::Truncated
        );
        assert_eq!(
            decode_binary(Vsn::V2, &[3, 0, 0, 0, 0, 0, 7]).unwrap_err(),
            ProtocolError::UnknownEncoding(7)
        );
        assert_eq!(
            decode_binary(Vsn::V2, &[0, 0]).unwrap_err(),
            ProtocolError::UnsupportedBinaryKind(0)
        );
        assert_eq!(
            decode_binary(Vsn::V2, &[3, 0, 0, 1, 0, 0, 1, 0xff]).unwrap_err(),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn binary_json_payload_must_be_json() {
        // topic "t", event "e", JSON encoding, body "{x"
        let frame = [3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{', b'x'];
        assert_eq!(
            decode_binary(Vsn::V2, &frame).unwrap_err(),
            ProtocolError::InvalidJsonPayload
        );
    }

    #[test]
    fn binary_json_payload_must_not_hold_lone_surrogates() {
        // topic "t", event "e", JSON encoding, body ["\ud800"]
        let mut frame = vec![3, 0, 0, 1, 1, 0, 1, b't', b'e'];
        frame.extend_from_slice(br#"["\ud800"]"#);
        assert_eq!(
            decode_binary(Vsn::V2, &frame).unwrap_err(),
            ProtocolError::InvalidJsonPayload
        );
        // A binary (encoding 0) body is opaque bytes.
        frame[6] = 0;
        assert!(decode_binary(Vsn::V2, &frame).is_ok());
    }

    #[test]
    fn binary_json_payload_must_be_utf8() {
        // Found by fuzz/frame_v2_binary: the docs' type-3 frame with "Hello, " turned into
        // "Hello\xca\xdf" inside a JSON string. serde_json skips the string without checking
        // its UTF-8, so the frame decoded and V1 receivers got a text frame that is not
        // UTF-8, which makes their client close the socket.
        let crash = hex(concat!(
            "030201120a00013130317265616c74696d653a636861742d726f6f6d757365722d6576656e747b22",
            "636f6e74656e74223a2248656c6c6fcadf576f726c6421222c22637265617465644174223a223031",
            "38342d31312d31375432313a31343a31345a222c226964223a2239623832333334392d373163302d",
            "343635622d396138332d613632616132613961653664222c22757365726e616d65223a2256435348",
            "4c443535366e51442d422d7655544a4a33227d",
        ));
        assert_eq!(
            decode_binary(Vsn::V2, &crash).unwrap_err(),
            ProtocolError::InvalidJsonPayload
        );
        // The same bytes with encoding 0 are an opaque binary payload.
        let mut binary = crash.clone();
        binary[6] = 0;
        assert!(decode_binary(Vsn::V2, &binary).is_ok());
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
