//! The recorded frames in `fixtures/` (copied from shared/research/samples, each naming
//! its source) decoded and re-encoded by this crate.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use bytes::Bytes;
use realtime_protocol::encode::{self, Status};
use realtime_protocol::event::ClientEvent;
use realtime_protocol::frame::{decode_binary, decode_text, Payload};
use realtime_protocol::{BroadcastMessage, Encoding, Vsn, WireFrame};
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(name: &str) -> Vec<u8> {
    let s = fixture(name);
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn client_frames_from_the_docs_decode() {
    for name in [
        "docs-v2-client-access_token.txt",
        "docs-v2-client-broadcast-text.txt",
        "docs-v2-client-heartbeat.txt",
        "docs-v2-client-phx_join-replay.txt",
        "docs-v2-client-phx_leave.txt",
        "docs-v2-client-presence-track.txt",
    ] {
        let text = fixture(name);
        let msg = decode_text(Vsn::V2, text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!matches!(ClientEvent::parse(&msg), ClientEvent::Other(_)), "{name}");
    }
    let v1 = fixture("docs-v1-client-phx_join.txt");
    let msg = decode_text(Vsn::V1, v1.as_bytes()).unwrap();
    assert!(matches!(ClientEvent::parse(&msg), ClientEvent::Join(_)));
}

#[test]
fn docs_type3_push_decodes_and_fans_out_as_type4() {
    let push = hex("docs-v2-client-user_broadcast_push-json.hex");
    let msg = decode_binary(Vsn::V2, &push).unwrap();
    assert_eq!(
        (msg.join_ref.as_deref(), msg.ref_.as_deref(), msg.topic.as_ref()),
        (Some("10"), Some("1"), "realtime:chat-room")
    );
    let Payload::UserBroadcast {
        event, encoding, body, ..
    } = msg.payload
    else {
        panic!()
    };
    assert_eq!((event, encoding), ("user-event", Encoding::Json));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["content"], "Hello, World!");
}

#[test]
fn server_serializer_type3_vectors_decode() {
    for (name, enc, meta) in [
        ("serializer-test-user_broadcast_push-json.hex", Encoding::Json, ""),
        ("serializer-test-user_broadcast_push-binary.hex", Encoding::Binary, ""),
        (
            "serializer-test-user_broadcast_push-metadata.hex",
            Encoding::Binary,
            r#"{"store":true}"#,
        ),
    ] {
        let bytes = hex(name);
        let msg = decode_binary(Vsn::V2, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (msg.join_ref.as_deref(), msg.ref_.as_deref(), msg.topic.as_ref()),
            (Some("12"), Some("123"), "topic")
        );
        let Payload::UserBroadcast {
            event,
            encoding,
            metadata,
            ..
        } = msg.payload
        else {
            panic!()
        };
        assert_eq!((event, encoding, metadata), ("user_event", enc, meta.as_bytes()));
    }
    // Types 0, 1 and 2 are never accepted from clients.
    for name in [
        "serializer-test-client-push-kind0.hex",
        "serializer-test-reply-kind1.hex",
        "serializer-test-broadcast-kind2.hex",
    ] {
        assert!(decode_binary(Vsn::V2, &hex(name)).is_err(), "{name}");
    }
}

#[test]
fn server_type4_vectors_encode() {
    let v = hex("serializer-test-user_broadcast-json-nometa.hex");
    let msg = BroadcastMessage::User {
        event: "user_event".into(),
        metadata: None,
        encoding: Encoding::Json,
        body: Bytes::from_static(br#"{"a":"b"}"#),
    };
    assert_eq!(msg.encode(Vsn::V2, "topic"), Some(WireFrame::Binary(Bytes::from(v))));
}

#[test]
fn server_frames_match_recorded_samples() {
    let reply = encode::reply(Vsn::V2, None, Some("26"), "phoenix", Status::Ok, "{}");
    assert_eq!(
        json(std::str::from_utf8(reply.bytes()).unwrap()),
        json(&fixture("heartbeat-reply.txt"))
    );
    let reply = encode::reply(
        Vsn::V2,
        Some("11"),
        Some("1"),
        "realtime:topic1",
        Status::Ok,
        r#"{"postgres_changes":[]}"#,
    );
    assert_eq!(
        json(std::str::from_utf8(reply.bytes()).unwrap()),
        json(&fixture("join-reply-no-postgres.txt"))
    );
    let close = encode::lifecycle(Vsn::V2, Some("3"), "realtime:avatar-stack-demo", "phx_close");
    assert_eq!(
        json(std::str::from_utf8(close.bytes()).unwrap()),
        json(&fixture("docs-v2-server-phx_close.txt"))
    );
    let sys = encode::push(
        Vsn::V2,
        Some("1"),
        "realtime:test",
        "system",
        &encode::system_payload(Some("test"), "system", false, "Client presence rate limit exceeded"),
    );
    assert_eq!(
        json(std::str::from_utf8(sys.bytes()).unwrap()),
        json(&fixture("system-client-presence-rate-limit.txt"))
    );
    let unmatched = encode::reply(
        Vsn::V2,
        None,
        Some("7"),
        "other:topic",
        Status::Error,
        &encode::reason("unmatched topic"),
    );
    assert_eq!(
        json(std::str::from_utf8(unmatched.bytes()).unwrap()),
        json(&fixture("unmatched-topic-reply.txt"))
    );
    let not_map = encode::reply(
        Vsn::V2,
        Some("1"),
        Some("5"),
        "realtime:test",
        Status::Error,
        &encode::reason("Presence track payload must be a map"),
    );
    assert_eq!(
        json(std::str::from_utf8(not_map.bytes()).unwrap()),
        json(&fixture("presence-reply-not-a-map.txt"))
    );
}

#[test]
fn recorded_js_session_client_frames_all_decode() {
    for (file, vsn) in [
        ("recorded/realtime-js-2.119.0-vsn2.frames.jsonl", Vsn::V2),
        ("recorded/realtime-js-2.119.0-vsn1.frames.jsonl", Vsn::V1),
        ("recorded/realtime-py-2.34.1.frames.jsonl", Vsn::V1),
    ] {
        let mut seen = 0;
        for line in fixture(file).lines() {
            let rec = json(line);
            if rec["dir"] != "in" {
                continue;
            }
            let data = rec["data"].as_str().unwrap();
            let decoded = match rec["kind"].as_str().unwrap() {
                "text" => decode_text(vsn, data.as_bytes()).map(|m| ClientEvent::parse(&m)),
                _ => {
                    let bytes: Vec<u8> = (0..data.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&data[i..i + 2], 16).unwrap())
                        .collect();
                    decode_binary(vsn, &bytes).map(|m| ClientEvent::parse(&m))
                }
            };
            let event = decoded.unwrap_or_else(|e| panic!("{file}: {line}: {e}"));
            assert!(!matches!(event, ClientEvent::Other(_)), "{file}: {line}");
            seen += 1;
        }
        assert!(seen > 5, "{file}");
    }
}
