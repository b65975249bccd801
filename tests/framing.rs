//! WebSocket framing on the server's read side, with frames written byte by byte on the
//! client's socket: fragments (with control frames between them), many frames in one
//! write, a frame trickled in pieces, and the fragment rules of RFC 6455 §5.4.
//!
//! The server reads one frame at a time and holds no read buffer between frames (so an
//! idle connection costs little): these are the cases where that could lose or merge bytes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const PING: u8 = 9;

/// One client frame, masked as RFC 6455 requires (with a non-zero key).
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

async fn write_raw(c: &mut Client, bytes: &[u8]) {
    match c.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.unwrap(),
        _ => unreachable!("tests use plain TCP"),
    }
}

fn heartbeat(ref_: &str) -> Vec<u8> {
    json!([null, ref_, "phoenix", "heartbeat", {}]).to_string().into_bytes()
}

async fn expect_heartbeat_reply(c: &mut Client, ref_: &str) {
    let f = c.recv().await;
    assert_eq!(f.json()[1], ref_, "{f:?}");
    assert_eq!(f.payload()["status"], "ok", "{f:?}");
}

/// The close code the server sends, read off the raw socket.
async fn close_code(c: &mut Client) -> Option<u16> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() {
            let _ = tcp.read_to_end(&mut buf).await;
        }
    });
    read.await.expect("the server ends the connection");
    let pos = buf.iter().position(|&b| b == 0x88)?;
    (buf.len() >= pos + 4).then(|| u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]))
}

/// A text message in three fragments with a ping between them, first written frame by
/// frame and then all in one write: one message, and the ping answered with its payload.
#[tokio::test]
async fn fragments_with_a_ping_between_them_make_one_message() {
    let s = Server::start().await;
    for one_write in [false, true] {
        let mut c = s.connect("2.0.0").await;
        let msg = heartbeat("7");
        let (a, rest) = msg.split_at(5);
        let (b, z) = rest.split_at(10);
        let frames = [
            frame(TEXT, false, a),
            frame(PING, true, b"are you there"),
            frame(CONTINUATION, false, b),
            frame(CONTINUATION, true, z),
        ];
        if one_write {
            write_raw(&mut c, &frames.concat()).await;
        } else {
            for f in &frames {
                write_raw(&mut c, f).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        // The pong comes first (tungstenite's reader sees it; `recv` skips it).
        let pong = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            pong,
            Message::Pong(b"are you there".to_vec().into()),
            "one write: {one_write}"
        );
        expect_heartbeat_reply(&mut c, "7").await;
    }
}

/// Many frames in one write are all read, in order; so is a frame trickled byte by byte.
#[tokio::test]
async fn pipelined_and_trickled_frames() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let burst: Vec<u8> = (0..200)
        .flat_map(|i| frame(TEXT, true, &heartbeat(&format!("p{i}"))))
        .collect();
    write_raw(&mut c, &burst).await;
    for i in 0..200 {
        expect_heartbeat_reply(&mut c, &format!("p{i}")).await;
    }
    // A 70 kB message (a 64-bit length) in uneven pieces, the header split too.
    let padded = json!([null, "big", "phoenix", "heartbeat", {"pad": "x".repeat(70_000)}]).to_string();
    let big = frame(TEXT, true, padded.as_bytes());
    for piece in big.chunks(7919) {
        write_raw(&mut c, &piece[..1]).await;
        write_raw(&mut c, &piece[1..]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    expect_heartbeat_reply(&mut c, "big").await;
    // A UTF-8 character split across two fragments is valid.
    let text = json!([null, "é", "phoenix", "heartbeat", {"name": "José"}]).to_string();
    let at = text.find('é').unwrap() + 1;
    let mut split = frame(TEXT, false, &text.as_bytes()[..at]);
    split.extend(frame(CONTINUATION, true, &text.as_bytes()[at..]));
    write_raw(&mut c, &split).await;
    expect_heartbeat_reply(&mut c, "é").await;
}

/// A V2 binary broadcast sent in fragments reaches the other member whole.
#[tokio::test]
async fn a_fragmented_binary_broadcast_is_delivered() {
    let s = Server::start().await;
    let mut sender = s.connect("2.0.0").await;
    let mut member = s.connect("2.0.0").await;
    let join_ref = sender.join("realtime:frag", json!({"config": {}})).await;
    member.join("realtime:frag", json!({"config": {}})).await;
    let push = user_broadcast_push(&join_ref, "9", "realtime:frag", "ev", true, br#"{"n":42}"#);
    let (a, b) = push.split_at(push.len() / 2);
    let mut bytes = frame(BINARY, false, a);
    bytes.extend(frame(CONTINUATION, true, b));
    write_raw(&mut sender, &bytes).await;
    // V2 members get user broadcasts as binary frames (type 4) carrying the payload as sent.
    match member.recv().await {
        Frame::Binary(b) => assert!(b.ends_with(br#"{"n":42}"#), "{b:?}"),
        other => panic!("expected the broadcast, got {other:?}"),
    }
}

/// RFC 6455 §5.4 violations close with 1002 (Cowboy's code), bad UTF-8 across fragments
/// with 1007; other clients are unaffected.
#[tokio::test]
async fn fragment_rule_violations_close_only_that_connection() {
    let s = Server::start().await;
    let mut witness = s.connect("2.0.0").await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("continuation without a start", frame(CONTINUATION, true, b"[]"), 1002),
        (
            "a new message before the last one ended",
            [frame(TEXT, false, b"[nu"), frame(TEXT, true, b"[]")].concat(),
            1002,
        ),
        (
            "invalid UTF-8 across fragments",
            [
                frame(TEXT, false, b"[\"a"),
                frame(CONTINUATION, true, &[0xff, 0xfe, b'"', b']']),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = s.connect("2.0.0").await;
        write_raw(&mut c, &bytes).await;
        assert_eq!(close_code(&mut c).await, Some(code), "{what}");
        witness.push(None, Some(what), "phoenix", "heartbeat", json!({})).await;
        expect_heartbeat_reply(&mut witness, what).await;
    }
}
