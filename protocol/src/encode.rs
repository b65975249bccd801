//! Server → client envelopes for each wire version.
//!
//! V1: `{"event","payload","ref","topic"}` — never `join_ref` (Phoenix's V1 serializer
//! drops it). V2: `[join_ref, ref, topic, event, payload]`. Payloads are passed in as
//! JSON text that is already encoded, so nothing here parses.

use bytes::Bytes;

use crate::json::{push_opt_str, push_str};
use crate::Vsn;

/// One outbound WebSocket message, ready to write. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame (always valid UTF-8 JSON).
    Text(Bytes),
    /// A binary frame (V2 user broadcast, type 4).
    Binary(Bytes),
}

impl WireFrame {
    /// The frame's bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            WireFrame::Text(b) | WireFrame::Binary(b) => b,
        }
    }

    /// Length in bytes, for outbound queue accounting.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True for an empty frame (never produced by this crate).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}

/// The routing fields of a server message.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Channel join_ref, or `None` for fastlane messages (V1 never writes it).
    pub join_ref: Option<&'a str>,
    /// Message ref (replies echo the client's), or `None`.
    pub ref_: Option<&'a str>,
    /// Full topic, e.g. `realtime:room1`.
    pub topic: &'a str,
    /// Event name, e.g. `phx_reply`.
    pub event: &'a str,
}

/// Encodes a message whose payload is already JSON text.
pub fn message(vsn: Vsn, env: Envelope<'_>, payload_json: &[u8]) -> WireFrame {
    let mut buf = Vec::with_capacity(payload_json.len() + env.topic.len() + env.event.len() + 48);
    match vsn {
        Vsn::V1 => {
            buf.extend_from_slice(b"{\"event\":");
            push_str(&mut buf, env.event);
            buf.extend_from_slice(b",\"payload\":");
            buf.extend_from_slice(payload_json);
            buf.extend_from_slice(b",\"ref\":");
            push_opt_str(&mut buf, env.ref_);
            buf.extend_from_slice(b",\"topic\":");
            push_str(&mut buf, env.topic);
            buf.push(b'}');
        }
        Vsn::V2 => {
            buf.push(b'[');
            push_opt_str(&mut buf, env.join_ref);
            buf.push(b',');
            push_opt_str(&mut buf, env.ref_);
            buf.push(b',');
            push_str(&mut buf, env.topic);
            buf.push(b',');
            push_str(&mut buf, env.event);
            buf.push(b',');
            buf.extend_from_slice(payload_json);
            buf.push(b']');
        }
    }
    WireFrame::Text(Bytes::from(buf))
}

/// Reply status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `"ok"`
    Ok,
    /// `"error"`
    Error,
}

/// `phx_reply` with `{"response": <response_json>, "status": ...}`.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    status: Status,
    response_json: &str,
) -> WireFrame {
    let status = match status {
        Status::Ok => "ok",
        Status::Error => "error",
    };
    let mut payload = Vec::with_capacity(response_json.len() + 32);
    payload.extend_from_slice(b"{\"response\":");
    payload.extend_from_slice(response_json.as_bytes());
    payload.extend_from_slice(b",\"status\":\"");
    payload.extend_from_slice(status.as_bytes());
    payload.extend_from_slice(b"\"}");
    let env = Envelope {
        join_ref,
        ref_,
        topic,
        event: "phx_reply",
    };
    message(vsn, env, &payload)
}

/// `{"reason": <text>}`, the response of error replies.
pub fn reason(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 14);
    s.push_str("{\"reason\":");
    s.push_str(&crate::json::quote(text));
    s.push('}');
    s
}

/// `phx_close` / `phx_error`: join_ref and ref are both the channel's join_ref
/// (clients ignore these events when ref differs from their current join_ref).
pub fn lifecycle(vsn: Vsn, join_ref: Option<&str>, topic: &str, event: &str) -> WireFrame {
    let env = Envelope {
        join_ref,
        ref_: join_ref,
        topic,
        event,
    };
    message(vsn, env, b"{}")
}

/// A channel push (`system`, `presence_state`): join_ref set, ref null.
pub fn push(vsn: Vsn, join_ref: Option<&str>, topic: &str, event: &str, payload_json: &[u8]) -> WireFrame {
    let env = Envelope {
        join_ref,
        ref_: None,
        topic,
        event,
    };
    message(vsn, env, payload_json)
}

/// A fastlane message for every subscriber of a topic (`presence_diff`,
/// `postgres_changes`, text broadcasts): join_ref and ref null.
pub fn fastlane(vsn: Vsn, topic: &str, event: &str, payload_json: &[u8]) -> WireFrame {
    push(vsn, None, topic, event, payload_json)
}

/// The `system` payload: `{"channel","extension","message","status"}`; `channel` is the
/// sub-topic (omitted for the operator disconnect notice, as Supabase does).
pub fn system_payload(channel: Option<&str>, extension: &str, ok: bool, message: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.len() + 96);
    buf.push(b'{');
    if let Some(channel) = channel {
        buf.extend_from_slice(b"\"channel\":");
        push_str(&mut buf, channel);
        buf.push(b',');
    }
    buf.extend_from_slice(b"\"extension\":");
    push_str(&mut buf, extension);
    buf.extend_from_slice(b",\"message\":");
    push_str(&mut buf, message);
    buf.extend_from_slice(if ok {
        b",\"status\":\"ok\"}"
    } else {
        b",\"status\":\"error\"}"
    });
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: WireFrame) -> String {
        match f {
            WireFrame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            WireFrame::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn heartbeat_reply_both_versions() {
        // samples/heartbeat-reply.txt
        let v2 = text(reply(Vsn::V2, None, Some("26"), "phoenix", Status::Ok, "{}"));
        assert_eq!(v2, r#"[null,"26","phoenix","phx_reply",{"response":{},"status":"ok"}]"#);
        // protocol.md §1.3, the py heartbeat with ref null
        let v1 = text(reply(Vsn::V1, None, None, "phoenix", Status::Ok, "{}"));
        assert_eq!(
            v1,
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":null,"topic":"phoenix"}"#
        );
    }

    #[test]
    fn v1_never_carries_join_ref() {
        let v1 = text(reply(
            Vsn::V1,
            Some("6"),
            Some("6"),
            "realtime:room1",
            Status::Ok,
            r#"{"postgres_changes":[]}"#,
        ));
        assert_eq!(
            v1,
            r#"{"event":"phx_reply","payload":{"response":{"postgres_changes":[]},"status":"ok"},"ref":"6","topic":"realtime:room1"}"#
        );
    }

    #[test]
    fn unmatched_topic_reply() {
        // samples/unmatched-topic-reply.txt
        let f = text(reply(
            Vsn::V2,
            None,
            Some("7"),
            "other:topic",
            Status::Error,
            &reason("unmatched topic"),
        ));
        assert_eq!(
            f,
            r#"[null,"7","other:topic","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
        );
    }

    #[test]
    fn close_and_error_carry_join_ref_as_ref() {
        // samples/docs-v2-server-phx_close.txt, docs-v2-server-phx_error.txt
        assert_eq!(
            text(lifecycle(Vsn::V2, Some("3"), "realtime:avatar-stack-demo", "phx_close")),
            r#"["3","3","realtime:avatar-stack-demo","phx_close",{}]"#
        );
        assert_eq!(
            text(lifecycle(Vsn::V2, Some("3"), "realtime:avatar-stack-demo", "phx_error")),
            r#"["3","3","realtime:avatar-stack-demo","phx_error",{}]"#
        );
    }

    #[test]
    fn system_push_shape() {
        // samples/system-token-expired.txt
        let payload = system_payload(Some("topic"), "system", false, "Token has expired 0 seconds ago");
        assert_eq!(
            text(push(Vsn::V2, Some("1"), "realtime:topic", "system", &payload)),
            r#"["1",null,"realtime:topic","system",{"channel":"topic","extension":"system","message":"Token has expired 0 seconds ago","status":"error"}]"#
        );
        // samples/system-server-requested-disconnect.txt
        let payload = system_payload(None, "system", true, "Server requested disconnect");
        assert_eq!(
            text(fastlane(Vsn::V2, "realtime:topic", "system", &payload)),
            r#"[null,null,"realtime:topic","system",{"extension":"system","message":"Server requested disconnect","status":"ok"}]"#
        );
    }

    #[test]
    fn topics_and_events_are_escaped() {
        let f = text(fastlane(Vsn::V2, "realtime:\"q\"\n", "e", b"{}"));
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v[2], "realtime:\"q\"\n");
    }
}
