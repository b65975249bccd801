//! Checks shared by the text-frame targets (`frame_v1`, `frame_v2_text`).
#![allow(dead_code)]

use realtime_protocol::encode::{self, Envelope};
use realtime_protocol::event::ClientEvent;
use realtime_protocol::filter::Binding;
use realtime_protocol::frame::{decode_text, Inbound, Payload};
use realtime_protocol::join::{binding_id, join_reply_response, JoinRequest};
use realtime_protocol::{BroadcastMessage, Encoding, Vsn, WireFrame};
use serde_json::Value;

/// Everything the server derives from a decoded text frame must not panic, and what it
/// re-encodes must decode to the same fields.
pub fn check_text_frame(vsn: Vsn, data: &[u8]) {
    let Ok(msg) = decode_text(vsn, data) else { return };
    let Payload::Json(payload) = msg.payload else {
        panic!("a text frame decoded to a binary payload");
    };
    // The payload is kept raw: it must be valid JSON text on its own.
    assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(payload.get()).is_ok(),
        "raw payload is not JSON: {:?}",
        payload.get()
    );

    // decode → encode (the server's own envelope writer) → decode gives the same fields.
    // V1 server frames never carry join_ref.
    let env = Envelope {
        join_ref: msg.join_ref.as_deref(),
        ref_: msg.ref_.as_deref(),
        topic: &msg.topic,
        event: &msg.event,
    };
    let frame = encode::message(vsn, env, payload.get().as_bytes());
    let again = decode_text(vsn, text_bytes(&frame)).unwrap_or_else(|e| {
        panic!(
            "re-encoded frame does not decode ({e}): {:?}",
            String::from_utf8_lossy(text_bytes(&frame))
        )
    });
    let expected_join_ref = match vsn {
        Vsn::V1 => None,
        Vsn::V2 => msg.join_ref.as_deref(),
    };
    assert_eq!(again.join_ref.as_deref(), expected_join_ref);
    assert_eq!(again.ref_, msg.ref_);
    assert_eq!(again.topic, msg.topic);
    assert_eq!(again.event, msg.event);
    match again.payload {
        Payload::Json(p) => assert_eq!(p.get(), payload.get()),
        Payload::UserBroadcast { .. } => panic!("text frame decoded to a binary payload"),
    }

    check_event(&msg);
}

/// Types the message the way the server does and checks what each kind leads to.
pub fn check_event(msg: &Inbound<'_>) {
    match ClientEvent::parse(msg) {
        ClientEvent::Join(join) => check_join(&join),
        ClientEvent::Broadcast(b) => check_broadcast(&b, &msg.topic),
        _ => {}
    }
}

/// A broadcast re-encoded for each receiver version must be a frame that receiver can
/// decode, carrying the same payload.
pub fn check_broadcast(b: &BroadcastMessage, topic: &str) {
    for vsn in [Vsn::V1, Vsn::V2] {
        let Some(frame) = b.encode(vsn, topic) else {
            // Only a binary payload for a V1 receiver may be dropped.
            assert!(
                matches!(
                    (vsn, b),
                    (
                        Vsn::V1,
                        BroadcastMessage::User {
                            encoding: Encoding::Binary,
                            ..
                        }
                    )
                ),
                "{vsn:?} receiver cannot take {b:?}"
            );
            continue;
        };
        match &frame {
            WireFrame::Text(bytes) => {
                // Any depth: the server never parses broadcast payloads, Supabase's Jason
                // takes any depth, so Value's recursion limit does not apply.
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    panic!(
                        "broadcast for {vsn:?} is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(bytes)
                    );
                }
                assert!(
                    std::str::from_utf8(bytes).is_ok(),
                    "text frame for {vsn:?} is not UTF-8"
                );
                let m = decode_text(vsn, bytes).expect("a broadcast frame decodes");
                assert_eq!(m.topic, topic);
                assert_eq!(m.event, "broadcast");
                if let BroadcastMessage::Map(map) = b {
                    let Payload::Json(p) = m.payload else { unreachable!() };
                    assert_eq!(p.get().as_bytes(), &map[..]);
                }
            }
            WireFrame::Binary(bytes) => {
                assert_eq!(vsn, Vsn::V2, "binary frame for a V1 receiver");
                let BroadcastMessage::User {
                    event,
                    metadata,
                    encoding,
                    body,
                } = b
                else {
                    panic!("a map broadcast became binary")
                };
                // 04 T E M enc | topic | event | metadata | payload
                assert_eq!(bytes[0], 4);
                let (t, e, m) = (usize::from(bytes[1]), usize::from(bytes[2]), usize::from(bytes[3]));
                assert_eq!(bytes[4], u8::from(*encoding == Encoding::Json));
                let rest = &bytes[5..];
                assert_eq!(&rest[..t], topic.as_bytes());
                assert_eq!(&rest[t..t + e], event.as_bytes());
                assert_eq!(&rest[t + e..t + e + m], metadata.as_deref().unwrap_or_default());
                assert_eq!(&rest[t + e + m..], &body[..]);
            }
        }
    }
}

/// A join payload: the reply the server builds from it is JSON that echoes every binding
/// with its id, and each binding either parses or has an error text.
pub fn check_join(join: &JoinRequest) {
    let bindings = &join.config.postgres_changes;
    let reply = join_reply_response(bindings);
    let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("join reply is not JSON ({e}): {reply}"));
    let list = reply["postgres_changes"]
        .as_array()
        .expect("postgres_changes is a list");
    assert_eq!(list.len(), bindings.len());
    for (echoed, binding) in list.iter().zip(bindings) {
        let id = binding_id(binding);
        assert!(id < (1 << 31));
        assert_eq!(echoed["id"].as_u64(), Some(u64::from(id)));
        for (k, v) in binding {
            if k != "id" {
                assert_eq!(&echoed[k], v, "binding key {k} not echoed");
            }
        }
        match Binding::parse(binding) {
            Ok(b) => {
                let _ = b.inspect();
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
    if let Some(key) = &join.config.presence_key {
        assert!(!key.is_empty());
    }
}

fn text_bytes(frame: &WireFrame) -> &[u8] {
    match frame {
        WireFrame::Text(b) => b,
        WireFrame::Binary(_) => panic!("encode::message wrote a binary frame"),
    }
}
