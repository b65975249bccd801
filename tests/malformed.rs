//! Malformed and hostile input against the real binary over real sockets.
//!
//! Every test opens a well-behaved client *before* the attack (joined to a witness topic)
//! and checks afterwards, with a client connected *after* the attack, that both are still
//! served: heartbeat, then a broadcast round trip in each direction (text V1 → V2, binary
//! V2 → V1). The attacking connection itself must get exactly the documented answer
//! (protocol.md §1.2, §1.5, §2, §4.2, §8, §11), and malformed frames none at all: the
//! first frame after a batch of garbage is the reply to a heartbeat sent after it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WITNESS: &str = "realtime:witness";

/// A client connected and joined before the attack.
struct Witness {
    before: Client,
    join_ref: String,
    apikey: String,
}

impl Witness {
    async fn new(s: &Server) -> Witness {
        Witness::with_apikey(s, &token("anon", 3600)).await
    }

    async fn with_apikey(s: &Server, apikey: &str) -> Witness {
        let mut before = s
            .connect_url(&s.ws_url(&format!("apikey={apikey}&vsn=2.0.0")), false)
            .await
            .expect("witness connects");
        let join_ref = before.join(WITNESS, config(json!({}))).await;
        Witness {
            before,
            join_ref,
            apikey: apikey.to_owned(),
        }
    }

    /// The client from before and a new one keep being served.
    async fn still_served(mut self, s: &Server) {
        heartbeat(&mut self.before, "hb-before").await;

        let mut after = s
            .connect_url(&s.ws_url(&format!("apikey={}&vsn=1.0.0", self.apikey)), true)
            .await
            .expect("a new client connects after the attack");
        heartbeat(&mut after, "hb-after").await;
        let after_join = after.join(WITNESS, config(json!({}))).await;

        // after (V1 text) → before (V2)
        after
            .push(
                Some(&after_join),
                Some("b1"),
                WITNESS,
                "broadcast",
                json!({"type": "broadcast", "event": "ping", "payload": {"n": 1}}),
            )
            .await;
        let got = self.before.recv_event("broadcast").await;
        assert_eq!(
            got.json(),
            &json!([null, null, WITNESS, "broadcast", {"type": "broadcast", "event": "ping", "payload": {"n": 1}}])
        );

        // before (V2 binary type 3) → after (V1, converted to JSON)
        let push = user_broadcast_push(&self.join_ref, "b2", WITNESS, "pong", true, br#"{"n":2}"#);
        self.before.send_binary(push).await;
        let got = after.recv_event("broadcast").await;
        assert_eq!(
            got.payload(),
            &json!({"event": "pong", "payload": {"n": 2}, "type": "broadcast"})
        );
    }
}

/// Sends a heartbeat and asserts that the very next frame is its reply.
async fn heartbeat(c: &mut Client, ref_: &str) {
    c.push(None, Some(ref_), "phoenix", "heartbeat", json!({})).await;
    let f = c.recv().await;
    assert_eq!(f.event(), "phx_reply", "expected the heartbeat reply, got {f:?}");
    assert_eq!(f.json()[1], ref_, "expected the heartbeat reply, got {f:?}");
    assert_eq!(f.payload(), &json!({"response": {}, "status": "ok"}));
}

/// Sends raw text frames, then checks the socket answers nothing but the next heartbeat.
async fn all_dropped(c: &mut Client, frames: &[&str]) {
    for f in frames {
        c.send_text(f).await;
    }
    heartbeat(c, "after-garbage").await;
}

/// A V2 client joined to `topic` with broadcast self (sees its own broadcasts).
async fn self_joined(s: &Server, vsn: &str, topic: &str) -> (Client, String) {
    let mut c = s.connect(vsn).await;
    let join_ref = c
        .join(topic, config(json!({"broadcast": {"self": true, "ack": false}})))
        .await;
    (c, join_ref)
}

// ------------------------------------------------------------------ text frames

#[tokio::test]
async fn garbage_text_frames_are_dropped_on_both_versions() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let garbage = [
        "",
        " ",
        "not json",
        "\u{1}\u{2}\u{3}",
        "{",
        "[",
        "}",
        "]]]]",
        "null",
        "true",
        "1e999999",
        "-",
        "\"just a string\"",
        "{\"topic\":",
        "[null,null,\"phoenix\",\"heartbeat\",{}",
        "[null,null,\"phoenix\",\"heartbeat\",{}]]",
        "[null,null,\"phoenix\",\"heartbeat\",{}] trailing",
        "{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{},\"ref\":\"1\"}{}",
        "[null,null,\"phoenix\",\"heartbeat\",{'a':1}]",
        "[null,null,\"phoenix\",\"heartbeat\",{\"a\":01}]",
        "[null,null,\"phoenix\",\"heartbeat\",{\"a\":\"\\x\"}]",
        "[null,null,\"phoenix\",\"heartbeat\",{\"a\":NaN}]",
    ];
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = s.connect(vsn).await;
        all_dropped(&mut c, &garbage).await;
    }
    w.still_served(&s).await;
}

#[tokio::test]
async fn v1_frames_of_the_wrong_shape_are_dropped() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let mut c = s.connect("1.0.0").await;
    all_dropped(
        &mut c,
        &[
            // A V2 array on a V1 socket, and an array in V1 field order (Phoenix's V1
            // decoder reads a map, nothing else).
            r#"[null,"1","phoenix","heartbeat",{}]"#,
            r#"["phoenix","heartbeat",{},"1"]"#,
            r#"["phoenix","heartbeat",{},"1",null]"#,
            // Each required key missing in turn.
            r#"{"event":"heartbeat","payload":{},"ref":"1"}"#,
            r#"{"topic":"phoenix","payload":{},"ref":"1"}"#,
            r#"{"topic":"phoenix","event":"heartbeat","ref":"1"}"#,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#,
            // Wrong types.
            r#"{"topic":null,"event":"heartbeat","payload":{},"ref":"1"}"#,
            r#"{"topic":["phoenix"],"event":"heartbeat","payload":{},"ref":"1"}"#,
            r#"{"topic":"phoenix","event":{},"payload":{},"ref":"1"}"#,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":{"a":1}}"#,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":[]}"#,
            r#"{}"#,
            r#"[]"#,
        ],
    )
    .await;
    w.still_served(&s).await;
}

#[tokio::test]
async fn v2_frames_of_the_wrong_shape_are_dropped() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let mut c = s.connect("2.0.0").await;
    all_dropped(
        &mut c,
        &[
            // A V1 object on a V2 socket.
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#,
            r#"[]"#,
            r#"[null]"#,
            r#"[null,"1"]"#,
            r#"[null,"1","phoenix"]"#,
            r#"[null,"1","phoenix","heartbeat"]"#,
            r#"[null,"1",null,"heartbeat",{}]"#,
            r#"[null,"1","phoenix",null,{}]"#,
            r#"[null,"1",["phoenix"],"heartbeat",{}]"#,
            r#"[null,{"r":1},"phoenix","heartbeat",{}]"#,
            r#"[[],"1","phoenix","heartbeat",{}]"#,
            r#"[null,"1",{"topic":"phoenix"},"heartbeat",{}]"#,
            r#"{"0":null,"1":"1","2":"phoenix","3":"heartbeat","4":{}}"#,
        ],
    )
    .await;
    w.still_served(&s).await;
}

// ------------------------------------------------------------------ binary frames

#[tokio::test]
async fn truncated_binary_frames_are_dropped_and_never_forwarded() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let (mut c, join_ref) = self_joined(&s, "2.0.0", "realtime:bin").await;
    let full = user_broadcast_push(&join_ref, "9", "realtime:bin", "cut", true, br#"{"x":[1,2,3]}"#);
    for n in 0..full.len() {
        c.send_binary(full[..n].to_vec()).await;
    }
    heartbeat(&mut c, "after-truncated").await;
    // The whole frame still works, and is the only broadcast delivered.
    c.send_binary(full.clone()).await;
    let Frame::Binary(b) = c.recv().await else {
        panic!("expected the one broadcast")
    };
    assert_eq!(b, [&[4u8, 12, 3, 0, 1][..], b"realtime:bincut{\"x\":[1,2,3]}"].concat());
    heartbeat(&mut c, "after-full").await;
    w.still_served(&s).await;
}

#[tokio::test]
async fn binary_frames_with_wrong_lengths_are_dropped_or_misrouted_harmlessly() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let (mut c, join_ref) = self_joined(&s, "2.0.0", "realtime:len").await;
    let good = user_broadcast_push(&join_ref, "7", "realtime:len", "ev", true, br#"{"a":1}"#);

    // Every length byte pushed past the end of the frame.
    for field in 1..=5 {
        let mut bad = good.clone();
        bad[field] = 255;
        c.send_binary(bad).await;
    }
    // Metadata claimed to cover the JSON body: the body left over is empty, not JSON.
    let mut bad = good.clone();
    bad[5] = 7;
    c.send_binary(bad).await;
    // A topic length one short: the topic becomes "realtime:le", the event "ne" and the
    // body `v{"a":1}`, which is not JSON ...
    let mut bad = good.clone();
    bad[3] -= 1;
    c.send_binary(bad).await;
    // ... non-UTF-8 inside each header string.
    // (offsets: the first byte of join_ref, of the topic)
    for offset in [7, 7 + join_ref.len() + 1] {
        let mut bad = good.clone();
        bad[offset] = 0xff;
        c.send_binary(bad).await;
    }
    heartbeat(&mut c, "after-lengths").await;

    // A topic length one short with a *binary* body decodes: it is a push to the topic
    // "realtime:le", which this socket has not joined → "unmatched topic".
    let mut shifted = user_broadcast_push(&join_ref, "8", "realtime:len", "ev", false, b"\x00\x01");
    shifted[3] -= 1;
    c.send_binary(shifted).await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!([null, "8", "realtime:le", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
    );
    w.still_served(&s).await;
}

#[tokio::test]
async fn unknown_binary_types_and_encodings_are_dropped() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let (mut c, join_ref) = self_joined(&s, "2.0.0", "realtime:kinds").await;
    let good = user_broadcast_push(&join_ref, "1", "realtime:kinds", "e", true, b"{}");
    // Types clients never send, including the server-only types 1, 2 and 4, and Phoenix's
    // generic push (type 0).
    for kind in [0u8, 1, 2, 4, 5, 0x7f, 0xff] {
        let mut bad = good.clone();
        bad[0] = kind;
        c.send_binary(bad).await;
    }
    // Encodings other than 0 (binary) and 1 (JSON).
    for enc in [2u8, 3, 0xff] {
        let mut bad = good.clone();
        bad[6] = enc;
        c.send_binary(bad).await;
    }
    c.send_binary(vec![]).await;
    heartbeat(&mut c, "after-kinds").await;

    // A binary frame on a V1 socket is never decodable.
    let mut v1 = s.connect("1.0.0").await;
    let v1_join = v1.join("realtime:kinds", config(json!({}))).await;
    v1.send_binary(user_broadcast_push(&v1_join, "2", "realtime:kinds", "e", true, b"{}"))
        .await;
    heartbeat(&mut v1, "v1-after-binary").await;
    c.expect_silence(Duration::from_millis(200)).await;
    w.still_served(&s).await;
}

// ------------------------------------------------------------------ topics and unicode

#[tokio::test]
async fn huge_topic_and_event_names() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    // Topics are capped at MAX_TOPIC_BYTES (255 by default, `realtime:` included) ...
    let mut c = s.connect("2.0.0").await;
    let too_long = format!("realtime:{}", "t".repeat(200_000));
    let (_, reply) = c.join_with(&too_long, config(json!({})), None).await;
    assert_eq!(
        reply.payload(),
        &json!({"response": {"reason": "TopicNameTooLong: The topic name is longer than 255 bytes"}, "status": "error"})
    );
    heartbeat(&mut c, "after-long-topic").await;
    // ... a topic at the limit and a huge event name are fine.
    let topic = format!("realtime:{}", "t".repeat(255 - "realtime:".len()));
    let event = "e".repeat(100_000);
    let (mut c, join_ref) = self_joined(&s, "2.0.0", &topic).await;
    c.push(
        Some(&join_ref),
        Some("2"),
        &topic,
        "broadcast",
        json!({"type": "broadcast", "event": event, "payload": {}}),
    )
    .await;
    let f = c.recv_event("broadcast").await;
    assert_eq!(
        f.json(),
        &json!([null, null, topic, "broadcast", {"type": "broadcast", "event": event, "payload": {}}])
    );

    // A huge event name on a topic that was never joined: "unmatched topic".
    let other = format!("realtime:{}", "u".repeat(100_000));
    c.push(Some(&join_ref), Some("3"), &other, &event, json!({})).await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!([null, "3", other, "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
    );

    // The empty sub-topic is refused with Supabase's text.
    let (_, reply) = c.join_with("realtime:", config(json!({})), None).await;
    assert_eq!(
        reply.payload(),
        &json!({"response": {"reason": "TopicNameRequired: You must provide a topic name"}, "status": "error"})
    );
    w.still_served(&s).await;
}

#[tokio::test]
async fn unicode_edge_cases_in_topics_events_and_payloads() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    // NUL (escaped), RTL override and mark, zero-width joiner sequences, a BOM inside a
    // string, 4-byte emoji and a non-BMP CJK character: all legal, all kept exactly.
    let topic = "realtime:r\u{0}o\u{202e}o\u{200f}m\u{feff}\u{1F600}\u{1F469}\u{200D}\u{1F4BB}\u{20000}";
    let event = "\u{202e}ev\u{0}\u{1F525}";
    let payload = json!({"t": "\u{0}\u{202e}\u{1F600}\u{feff}\u{10FFFF}", "\u{1F511}": ["\u{200f}"]});
    for vsn in ["1.0.0", "2.0.0"] {
        let (mut c, join_ref) = self_joined(&s, vsn, topic).await;
        c.push(
            Some(&join_ref),
            Some("5"),
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": event, "payload": payload}),
        )
        .await;
        let f = c.recv_event("broadcast").await;
        assert_eq!(f.json()[2], topic, "{vsn}");
        assert_eq!(
            f.payload(),
            &json!({"type": "broadcast", "event": event, "payload": payload}),
            "{vsn}"
        );
    }

    // The same through a V2 binary push: type 4 carries the exact UTF-8 bytes.
    let (mut c, join_ref) = self_joined(&s, "2.0.0", topic).await;
    let body = serde_json::to_vec(&payload).unwrap();
    c.send_binary(user_broadcast_push(&join_ref, "6", topic, event, true, &body))
        .await;
    let Frame::Binary(b) = c.recv().await else {
        panic!("expected a type-4 frame")
    };
    let expected = [
        &[4u8, topic.len() as u8, event.len() as u8, 0, 1][..],
        topic.as_bytes(),
        event.as_bytes(),
        &body,
    ]
    .concat();
    assert_eq!(b, expected);

    // A byte-order mark before the frame, a raw NUL or other control byte inside a
    // string, and lone surrogate escapes anywhere (in the topic, the event, the payload,
    // the ref) are not JSON Supabase accepts (Jason refuses lone surrogates): dropped.
    all_dropped(
        &mut c,
        &[
            "\u{feff}[null,\"1\",\"phoenix\",\"heartbeat\",{}]",
            "[null,\"1\",\"phoe\u{0}nix\",\"heartbeat\",{}]",
            "[null,\"1\",\"phoenix\",\"heart\u{1f}beat\",{}]",
            r#"[null,"1","realtime:\ud800","broadcast",{}]"#,
            r#"[null,"1","phoenix","heartbeat\udfff",{}]"#,
            r#"[null,"\ud83d","phoenix","heartbeat",{}]"#,
            r#"[null,"1","phoenix","heartbeat",{"a":"\ud800"}]"#,
            r#"[null,"1","phoenix","heartbeat",{"a":"\udc00\ud800"}]"#,
            r#"[null,"1","phoenix","heartbeat",{"\ud800":1}]"#,
        ],
    )
    .await;
    // A broadcast whose payload holds a lone surrogate is not forwarded either.
    let lone = format!(
        r#"["{join_ref}","7","{}","broadcast",{{"type":"broadcast","event":"e","payload":{{"s":"\ud800"}}}}]"#,
        serde_json::to_string(topic).unwrap().trim_matches('"')
    );
    c.send_text(&lone).await;
    // ... while an escaped backslash before "ud800" is just text, and a proper pair is
    // one character: both are delivered as sent.
    let fine = format!(
        r#"["{join_ref}","8","{}","broadcast",{{"type":"broadcast","event":"e","payload":{{"s":"\\ud800 \ud83d\ude00"}}}}]"#,
        serde_json::to_string(topic).unwrap().trim_matches('"')
    );
    c.send_text(&fine).await;
    let f = c.recv().await;
    assert_eq!(
        f.payload(),
        &json!({"type": "broadcast", "event": "e", "payload": {"s": "\\ud800 \u{1F600}"}})
    );
    heartbeat(&mut c, "after-unicode").await;
    w.still_served(&s).await;
}

// ------------------------------------------------------------------ nesting and size

#[tokio::test]
async fn deeply_nested_json() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    const DEPTH: usize = 100_000;
    let arrays = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let open_arrays = "[".repeat(DEPTH);
    let mut objects = "{\"a\":".repeat(DEPTH);
    objects.push('1');
    objects.push_str(&"}".repeat(DEPTH));
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = s.connect(vsn).await;
        let as_v1 = format!(r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"1","x":{objects}}}"#);
        all_dropped(
            &mut c,
            &[
                arrays.as_str(),
                open_arrays.as_str(),
                objects.as_str(),
                &as_v1[..as_v1.len() - 1],
                // A frame whose join_ref is a nested array.
                format!(r#"[{arrays},"1","phoenix","heartbeat",{{}}]"#).as_str(),
            ],
        )
        .await;
        // Nesting in an unknown V1 key is ignored (Phoenix reads only its keys): the
        // heartbeat is answered.
        if vsn == "1.0.0" {
            c.send_text(&as_v1).await;
            let f = c.recv().await;
            assert_eq!((f.event(), &f.json()[1]), ("phx_reply", &json!("1")));
        }
    }

    // A broadcast payload nested 100,000 deep is forwarded as sent (the server never
    // parses it; Supabase's Jason accepts any depth), and a join whose config is nested
    // that deep still joins, with the default config.
    let (mut c, join_ref) = self_joined(&s, "2.0.0", "realtime:deep").await;
    let frame = format!(
        r#"["{join_ref}","2","realtime:deep","broadcast",{{"type":"broadcast","event":"e","payload":{arrays}}}]"#
    );
    c.send_text(&frame).await;
    let raw = raw_text(&mut c).await;
    assert_eq!(
        raw,
        format!(r#"[null,null,"realtime:deep","broadcast",{{"type":"broadcast","event":"e","payload":{arrays}}}]"#)
    );
    c.send_text(&format!(
        r#"["20","20","realtime:deep2","phx_join",{{"config":{objects}}}]"#
    ))
    .await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!(["20", "20", "realtime:deep2", "phx_reply", {"response": {"postgres_changes": []}, "status": "ok"}])
    );
    w.still_served(&s).await;
}

/// The next text frame, unparsed (the harness' JSON parser has a depth limit).
async fn raw_text(c: &mut Client) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .expect("socket ok");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_only_that_connection() {
    let s = Server::start_with(&[("MAX_FRAME_SIZE", "100000")]).await;
    let w = Witness::new(&s).await;
    // Exactly at the limit is fine.
    let mut c = s.connect("2.0.0").await;
    let pad = |n: usize| "x".repeat(n);
    let head = r#"[null,"1","phoenix","heartbeat",{"p":""}]"#.len();
    c.send_text(&format!(
        r#"[null,"1","phoenix","heartbeat",{{"p":"{}"}}]"#,
        pad(100_000 - head)
    ))
    .await;
    assert_eq!(c.recv().await.json()[1], "1");
    // One byte more: Cowboy closes with 1009 (message too big).
    c.send_text(&format!(
        r#"[null,"2","phoenix","heartbeat",{{"p":"{}"}}]"#,
        pad(100_001 - head)
    ))
    .await;
    assert_eq!(c.recv().await, Frame::Close(Some(1009)));
    // So does a binary frame, and a message split into fragments that only together
    // exceed the limit.
    let mut b = s.connect("2.0.0").await;
    b.send_binary(vec![3; 100_001]).await;
    assert_eq!(b.recv().await, Frame::Close(Some(1009)));
    let mut f = s.connect("2.0.0").await;
    f.ws.send(Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![b'['; 60_000],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            false,
        ),
    ))
    .await
    .unwrap();
    f.ws.send(Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![b']'; 60_000],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Continue,
            ),
            true,
        ),
    ))
    .await
    .unwrap();
    assert_eq!(f.recv().await, Frame::Close(Some(1009)));
    w.still_served(&s).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_only_that_connection() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let mut c = s.connect("2.0.0").await;
    // tungstenite's Message::Text insists on UTF-8: write the frame by hand (masked,
    // as a client must), FIN + text, 4 bytes "\xff\xfe[]".
    let raw = [0x81u8, 0x84, 0, 0, 0, 0, 0xff, 0xfe, b'[', b']'];
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(&raw).await.unwrap();
    }
    // Cowboy closes with 1007 (invalid frame payload data).
    let mut code = None;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = Vec::new();
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() {
            use tokio::io::AsyncReadExt;
            let _ = tcp.read_to_end(&mut buf).await;
        }
        buf
    })
    .await
    .expect("the server ends the connection");
    // Server frames are unmasked: 0x88, len, code (2 bytes), reason.
    if let Some(pos) = read.iter().position(|&b| b == 0x88) {
        if read.len() >= pos + 4 {
            code = Some(u16::from_be_bytes([read[pos + 2], read[pos + 3]]));
        }
    }
    assert_eq!(code, Some(1007), "close frame in {read:?}");
    w.still_served(&s).await;
}

/// RFC 6455 §5.1: a client frame without a mask closes the connection with 1002, however
/// valid its payload; other clients are unaffected.
#[tokio::test]
async fn an_unmasked_client_frame_closes_only_that_connection() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let heartbeat = br#"[null,"1","phoenix","heartbeat",{}]"#;
    // FIN + text, no mask bit, then the payload in clear; and the same as a ping.
    let mut text = vec![0x81u8, heartbeat.len() as u8];
    text.extend_from_slice(heartbeat);
    let ping = vec![0x89u8, 0x02, b'h', b'i'];
    for raw in [text, ping] {
        let mut c = s.connect("2.0.0").await;
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = Vec::new();
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tcp.write_all(&raw).await.unwrap();
                let _ = tcp.read_to_end(&mut buf).await;
            }
            buf
        })
        .await
        .expect("the server ends the connection");
        // Nothing but the close frame: 0x88, length, code 1002.
        assert_eq!(
            read.get(..4),
            Some(&[0x88, 0x02, 0x03, 0xea][..]),
            "got {read:?} for {raw:?}"
        );
    }
    w.still_served(&s).await;
}

// ------------------------------------------------------------------ JWTs

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// `alg: none`, no signature.
fn alg_none(claims: Value) -> String {
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims))
}

/// HS256 signed with `secret` under a chosen header.
fn hs256_with_header(header: Value, claims: Value, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

const SIGNER: &str = "Failed to generate JWT signer, check your JWT secret or JWKS configuration";

/// Asserts the upgrade is refused with 401 and `{"error": text}`.
async fn refused(s: &Server, apikey: &str, text: &str) {
    let (status, body) = s
        .refused_upgrade(&format!("/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0"), &[])
        .await;
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    assert_eq!((status, body), (401, json!({"error": text})), "apikey {apikey}");
}

/// Asserts a join with `access_token` is refused with `reason`.
async fn join_refused(c: &mut Client, topic: &str, access_token: &str, reason: &str) {
    let (_, reply) = c.join_with(topic, config(json!({})), Some(access_token)).await;
    assert_eq!(
        reply.payload(),
        &json!({"response": {"reason": reason}, "status": "error"}),
        "token {access_token}"
    );
}

#[tokio::test]
async fn bad_jwts_at_connect_join_and_refresh() {
    let s = Server::start().await;
    let w = Witness::new(&s).await;
    let now = now();
    let none = alg_none(json!({"role": "anon", "exp": now + 3600}));
    let expired = claims_token(json!({"role": "anon", "exp": now - 100}));
    let no_role = claims_token(json!({"exp": now + 3600}));
    let text_exp = claims_token(json!({"role": "anon", "exp": "tomorrow"}));
    let null_exp = claims_token(json!({"role": "anon", "exp": null}));

    // Upgrade: HTTP 401 with Supabase's text (protocol.md §1.2).
    refused(&s, &none, SIGNER).await;
    refused(&s, &expired, "Token has expired").await;
    refused(&s, &no_role, "Fields `role` and `exp` are required in JWT").await;
    refused(&s, &text_exp, "Token expiration time is invalid").await;
    refused(&s, &null_exp, "Token expiration time is invalid").await;

    // Join: phx_reply error "<Code>: <message>" (§4.2 step 8).
    let mut c = s.connect("2.0.0").await;
    join_refused(&mut c, "realtime:j1", &none, &format!("JwtSignerError: {SIGNER}")).await;
    join_refused(
        &mut c,
        "realtime:j2",
        &no_role,
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
    )
    .await;
    join_refused(
        &mut c,
        "realtime:j3",
        &text_exp,
        "InvalidJWTToken: Token expiration time is invalid",
    )
    .await;
    let (_, reply) = c.join_with("realtime:j4", config(json!({})), Some(&expired)).await;
    let reason = reply.payload()["response"]["reason"].as_str().unwrap().to_owned();
    let ago: i64 = reason
        .strip_prefix("InvalidJWTToken: Token has expired ")
        .and_then(|r| r.strip_suffix(" seconds ago"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reason {reason:?}"));
    assert!((100..=102).contains(&ago), "{reason}");
    assert_eq!(reply.payload()["status"], "error");

    // Refresh: system error then phx_close (§8.2, §11.2); the socket stays up.
    for (bad, message) in [
        (none.as_str(), SIGNER),
        (no_role.as_str(), "Fields `role` and `exp` are required in JWT"),
        (text_exp.as_str(), "Token expiration time is invalid"),
    ] {
        let join_ref = c.join("realtime:refresh", config(json!({}))).await;
        c.push(
            Some(&join_ref),
            Some("r"),
            "realtime:refresh",
            "access_token",
            json!({"access_token": bad}),
        )
        .await;
        let sys = c.recv_event("system").await;
        assert_eq!(
            sys.json(),
            &json!([join_ref, null, "realtime:refresh", "system", {"channel": "refresh", "extension": "system", "message": message, "status": "error"}])
        );
        let close = c.recv_event("phx_close").await;
        assert_eq!(
            close.json(),
            &json!([join_ref, join_ref, "realtime:refresh", "phx_close", {}])
        );
    }
    heartbeat(&mut c, "after-jwts").await;
    w.still_served(&s).await;
}

/// The RSA key of `src/auth/fixtures.rs` (kid `rsa-1`): its JWKS entry and public key.
const RSA_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-1","alg":"RS256","use":"sig","e":"AQAB","n":"vI9EJgs_CPEGS4KFzd-Jq9jfu-8AAkaKQeckReIj2XSdc7QUykSeGjh0n8GnVq7uO-QLaEWBhIthch5MBHjIJvKqZMsW-Rn3Rs0CGTXbOYsmG67HigyZut7DUP1vL_sGnu0_Zvem0lQ038emvVll9Cv2d-U92RNFCy2TzBg119f-U-0itQhp9KwSiwxlsB2RxBqEtnaytGbIw4ecRVKd7R1T0P1FoM-vLzjxnQ29kcj8YJbNIDGwWPeCtLihWDZflAQLWOQFgN2tnQDQ7xwVVbCBBf71daAxkVwTMP7rPeU1XYijamfKjbFT9N5Kz3Z6ZDrQvfI5BkH0tlNO8T0vww"}]}"#;
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvI9EJgs/CPEGS4KFzd+J
q9jfu+8AAkaKQeckReIj2XSdc7QUykSeGjh0n8GnVq7uO+QLaEWBhIthch5MBHjI
JvKqZMsW+Rn3Rs0CGTXbOYsmG67HigyZut7DUP1vL/sGnu0/Zvem0lQ038emvVll
9Cv2d+U92RNFCy2TzBg119f+U+0itQhp9KwSiwxlsB2RxBqEtnaytGbIw4ecRVKd
7R1T0P1FoM+vLzjxnQ29kcj8YJbNIDGwWPeCtLihWDZflAQLWOQFgN2tnQDQ7xwV
VbCBBf71daAxkVwTMP7rPeU1XYijamfKjbFT9N5Kz3Z6ZDrQvfI5BkH0tlNO8T0v
wwIDAQAB
-----END PUBLIC KEY-----
";
/// RS256 with kid `rsa-1`, signed by Python's `cryptography` (`PY_RS256` in
/// src/auth/fixtures.rs): role `authenticated`, expires in 2100.
const RS256_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "iooEVdRTLuRUdBpQAQHAv94rlhDN7-nsH_dVUNt_IGsArFk3ue8d49sVGuqrCQH4nCXfdkPiWnm1wEoVPpaTG4OtStNoXDXs4hH6_RSar7ctUS_NKNFyRpb1gm8bm35bI-o1FbMV2cT6uY-AGlxX9ctsumPNwc2GlzBXWd7bgoik-Y2C3X_8XqR9StUXrADhlJLmQts5oE8hgw7wcar40Z4hTCMWxhLpCUhEGoJWhJyBBzIhBY4tvZr_A0yr2A_0gB1K65G5-3Io2tHMMOb9MBxU41OTYR1XsBdXO45PYTv3y4Ss8k6cyVsLm7b22YG5uQyTDtinMeTpkCUkbs2WWA"
);

/// The public key material an attacker can read, each tried as an HMAC secret.
fn public_key_secrets() -> Vec<Vec<u8>> {
    let der_b64: String = RSA_PUBLIC_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(der_b64).unwrap();
    let jwk: Value = serde_json::from_str(RSA_JWKS).unwrap();
    let n = URL_SAFE_NO_PAD.decode(jwk["keys"][0]["n"].as_str().unwrap()).unwrap();
    vec![
        RSA_PUBLIC_PEM.as_bytes().to_vec(),
        RSA_PUBLIC_PEM.trim_end().as_bytes().to_vec(),
        der,
        n,
        RSA_JWKS.as_bytes().to_vec(),
    ]
}

#[tokio::test]
async fn key_confusion_hs256_signed_with_the_rsa_public_key_is_refused() {
    // JWKS only: there is no HMAC secret at all, so no HS token can verify.
    let s = Server::start_with(&[("JWT_SECRET", ""), ("JWT_JWKS", RSA_JWKS)]).await;
    let w = Witness::with_apikey(&s, RS256_TOKEN).await;
    let claims = json!({"role": "service_role", "exp": now() + 3600});
    let mut c = s
        .connect_url(&s.ws_url(&format!("apikey={RS256_TOKEN}&vsn=2.0.0")), false)
        .await
        .unwrap();
    for secret in public_key_secrets() {
        let plain = hs256_with_header(json!({"alg": "HS256", "typ": "JWT"}), claims.clone(), &secret);
        refused(&s, &plain, SIGNER).await;
        join_refused(&mut c, "realtime:kc", &plain, &format!("JwtSignerError: {SIGNER}")).await;
        // Naming the RSA key's kid does not make it an HMAC key.
        let with_kid = hs256_with_header(
            json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}),
            claims.clone(),
            &secret,
        );
        let text =
            "Failed to generate JWT signer for key ID (kid) \"rsa-1\", check your JWT secret or JWKS configuration";
        refused(&s, &with_kid, text).await;
        join_refused(&mut c, "realtime:kc", &with_kid, &format!("JwtSignerError: {text}")).await;
    }
    // alg none with the RSA kid is no better.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(&json!({"role": "service_role", "exp": now() + 3600}))
    );
    refused(&s, &none, SIGNER).await;
    heartbeat(&mut c, "after-confusion").await;
    w.still_served(&s).await;

    // Secret and JWKS both configured: the HS token is checked with the real secret, and
    // the signature made with the public key fails.
    let s = Server::start_with(&[("JWT_JWKS", RSA_JWKS)]).await;
    let w = Witness::new(&s).await;
    let mut c = s.connect("2.0.0").await;
    for secret in public_key_secrets() {
        for header in [
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}),
        ] {
            let forged = hs256_with_header(header, claims.clone(), &secret);
            refused(&s, &forged, "Failed to validate JWT signature").await;
            join_refused(
                &mut c,
                "realtime:kc",
                &forged,
                "JwtSignatureError: Failed to validate JWT signature",
            )
            .await;
        }
    }
    // The RS256 token itself is accepted on both servers.
    let mut ok = s
        .connect_url(&s.ws_url(&format!("apikey={RS256_TOKEN}&vsn=2.0.0")), false)
        .await
        .expect("RS256 apikey accepted");
    heartbeat(&mut ok, "rs256").await;
    w.still_served(&s).await;
}
