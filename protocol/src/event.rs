//! Typed client events: one match in the server dispatches them (protocol.md §3.1).

use bytes::Bytes;
use serde_json::Value;

use crate::broadcast::BroadcastMessage;
use crate::frame::{Inbound, Payload};
use crate::join::JoinRequest;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `heartbeat` on topic `phoenix`.
    Heartbeat,
    /// `phx_join`.
    Join(JoinRequest),
    /// `phx_leave`.
    Leave,
    /// `access_token` with the new token (`None` for null or a non-string).
    AccessToken(Option<String>),
    /// `broadcast`.
    Broadcast(BroadcastMessage),
    /// `presence`.
    Presence(PresenceCommand),
    /// Any other event (counted, logged, otherwise ignored, like Supabase).
    Other(String),
}

/// A `presence` push.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceCommand {
    /// `track` with its payload (not necessarily an object: the server replies with an
    /// error when it is not).
    Track(Value),
    /// `untrack`.
    Untrack,
    /// No `event` key: Supabase replies ok and does nothing.
    Missing,
    /// An event other than track/untrack.
    Unknown(String),
}

impl ClientEvent {
    /// Types an inbound message. Events are matched exactly as Phoenix does; the presence
    /// sub-event is lower-cased as Supabase does.
    pub fn parse(msg: &Inbound<'_>) -> ClientEvent {
        let raw = match msg.payload {
            Payload::Json(raw) => raw.get().as_bytes(),
            Payload::UserBroadcast {
                event, encoding, body, ..
            } => {
                // Receivers never see push metadata; its one key, `persist`, is read by
                // [`crate::persist::from_metadata`].
                return ClientEvent::Broadcast(BroadcastMessage::User {
                    event: event.to_owned(),
                    metadata: None,
                    encoding,
                    body: Bytes::copy_from_slice(body),
                });
            }
        };
        match msg.event.as_ref() {
            "heartbeat" if msg.topic == "phoenix" => ClientEvent::Heartbeat,
            "phx_join" => ClientEvent::Join(JoinRequest::parse(raw)),
            "phx_leave" => ClientEvent::Leave,
            "access_token" => {
                let token = match serde_json::from_slice::<Value>(raw) {
                    Ok(Value::Object(mut m)) => match m.remove("access_token") {
                        Some(Value::String(t)) => Some(t),
                        _ => None,
                    },
                    _ => None,
                };
                ClientEvent::AccessToken(token)
            }
            "broadcast" => ClientEvent::Broadcast(BroadcastMessage::Map(Bytes::copy_from_slice(raw))),
            "presence" => ClientEvent::Presence(PresenceCommand::parse(raw)),
            other => ClientEvent::Other(other.to_owned()),
        }
    }
}

impl PresenceCommand {
    fn parse(raw: &[u8]) -> PresenceCommand {
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(raw) else {
            return PresenceCommand::Missing;
        };
        let Some(Value::String(event)) = m.remove("event") else {
            return PresenceCommand::Missing;
        };
        match event.to_ascii_lowercase().as_str() {
            "track" => PresenceCommand::Track(m.remove("payload").unwrap_or(Value::Null)),
            "untrack" => PresenceCommand::Untrack,
            _ => PresenceCommand::Unknown(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_binary, decode_text};
    use crate::{Encoding, Vsn};

    fn parse_v2(text: &str) -> ClientEvent {
        ClientEvent::parse(&decode_text(Vsn::V2, text.as_bytes()).unwrap())
    }

    #[test]
    fn heartbeat_only_on_phoenix() {
        assert_eq!(
            parse_v2(r#"[null,"11","phoenix","heartbeat",{}]"#),
            ClientEvent::Heartbeat
        );
        assert_eq!(
            parse_v2(r#"[null,"11","realtime:x","heartbeat",{}]"#),
            ClientEvent::Other("heartbeat".into())
        );
    }

    #[test]
    fn presence_js_and_py_shapes() {
        // recorded js track / untrack and py track (no "type")
        assert_eq!(
            parse_v2(
                r#"["6","7","realtime:room1","presence",{"type":"presence","event":"track","payload":{"online_at":"2025-01-01T00:00:00Z"}}]"#
            ),
            ClientEvent::Presence(PresenceCommand::Track(
                serde_json::json!({"online_at":"2025-01-01T00:00:00Z"})
            ))
        );
        assert_eq!(
            parse_v2(r#"["6","13","realtime:room1","presence",{"type":"presence","event":"untrack"}]"#),
            ClientEvent::Presence(PresenceCommand::Untrack)
        );
        let py = r#"{"event":"presence","payload":{"event":"track","payload":{"u":1}},"topic":"realtime:room1","ref":"2","join_ref":"1"}"#;
        assert_eq!(
            ClientEvent::parse(&decode_text(Vsn::V1, py.as_bytes()).unwrap()),
            ClientEvent::Presence(PresenceCommand::Track(serde_json::json!({"u":1})))
        );
        assert_eq!(
            parse_v2(r#"["1","2","realtime:r","presence",{"event":"TRACK","payload":"x"}]"#),
            ClientEvent::Presence(PresenceCommand::Track(Value::String("x".into())))
        );
        assert_eq!(
            parse_v2(r#"["1","2","realtime:r","presence",{}]"#),
            ClientEvent::Presence(PresenceCommand::Missing)
        );
    }

    #[test]
    fn access_token_values() {
        assert_eq!(
            parse_v2(r#"["6","10","realtime:room1","access_token",{"access_token":"USER-JWT-2"}]"#),
            ClientEvent::AccessToken(Some("USER-JWT-2".into()))
        );
        assert_eq!(
            parse_v2(r#"["6","10","realtime:room1","access_token",{"access_token":null}]"#),
            ClientEvent::AccessToken(None)
        );
    }

    #[test]
    fn text_broadcast_keeps_map_bytes() {
        let e = parse_v2(
            r#"["1","3","realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1}}]"#,
        );
        assert_eq!(
            e,
            ClientEvent::Broadcast(BroadcastMessage::Map(Bytes::from_static(
                br#"{"type":"broadcast","event":"cursor","payload":{"x":1}}"#
            )))
        );
    }

    #[test]
    fn binary_push_becomes_user_broadcast() {
        // recorded js ArrayBuffer push: 03 01 01 0e 03 00 00 | "6" | "9" | realtime:room1 | bin | 01 02 03 ff
        let bytes = [
            &[3u8, 1, 1, 14, 3, 0, 0][..],
            b"6",
            b"9",
            b"realtime:room1",
            b"bin",
            &[1, 2, 3, 255],
        ]
        .concat();
        let m = decode_binary(Vsn::V2, &bytes).unwrap();
        assert_eq!(m.ref_.as_deref(), Some("9"));
        assert_eq!(
            ClientEvent::parse(&m),
            ClientEvent::Broadcast(BroadcastMessage::User {
                event: "bin".into(),
                metadata: None,
                encoding: Encoding::Binary,
                body: Bytes::from_static(&[1, 2, 3, 255]),
            })
        );
    }
}
