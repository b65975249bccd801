//! Broadcast over the WebSocket: self, ack, binary, mixed versions, isolation, limits,
//! slow consumers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn binary_push_reaches_v2_peer_as_type4_and_not_the_sender() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a.join("realtime:room1", config(json!({}))).await;
    b.join("realtime:room1", config(json!({}))).await;
    a.send_binary(user_broadcast_push(
        &ja,
        "8",
        "realtime:room1",
        "cursor",
        true,
        br#"{"x":1}"#,
    ))
    .await;
    let mut want = vec![4, 14, 6, 0, 1];
    want.extend_from_slice(b"realtime:room1cursor{\"x\":1}");
    assert_eq!(b.recv().await, Frame::Binary(want));
    a.expect_silence(QUIET).await;
}

#[tokio::test]
async fn self_and_ack() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let ja = a
        .join(
            "realtime:room",
            config(json!({"broadcast": {"self": true, "ack": true}})),
        )
        .await;
    a.send_binary(user_broadcast_push(
        &ja,
        "8",
        "realtime:room",
        "cursor",
        true,
        br#"{"x":1}"#,
    ))
    .await;
    // Ack is a JSON text reply to the binary push, after dispatch.
    let mut frames = [a.recv().await, a.recv().await];
    frames.sort_by_key(|f| matches!(f, Frame::Binary(_)));
    assert_eq!(
        frames[0].json(),
        &json!([ja, "8", "realtime:room", "phx_reply", {"response": {}, "status": "ok"}])
    );
    assert!(matches!(&frames[1], Frame::Binary(b) if b[0] == 4));
}

#[tokio::test]
async fn binary_payload_skips_v1_members_and_json_is_converted_for_them() {
    let s = Server::start().await;
    let mut js = s.connect("2.0.0").await;
    let mut py = s.connect("1.0.0").await;
    let jj = js.join("realtime:room", config(json!({}))).await;
    py.join("realtime:room", config(json!({}))).await;

    js.send_binary(user_broadcast_push(
        &jj,
        "3",
        "realtime:room",
        "bin",
        false,
        &[1, 2, 3, 255],
    ))
    .await;
    py.expect_silence(QUIET).await;

    js.send_binary(user_broadcast_push(&jj, "4", "realtime:room", "e", true, br#"{"a":1}"#))
        .await;
    let Frame::Text(_, raw) = py.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"{"event":"broadcast","payload":{"event":"e","payload":{"a":1},"type":"broadcast"},"ref":null,"topic":"realtime:room"}"#
    );
}

#[tokio::test]
async fn v1_text_broadcast_reaches_v2_as_the_same_map() {
    let s = Server::start().await;
    let mut js = s.connect("2.0.0").await;
    let mut py = s.connect("1.0.0").await;
    js.join("realtime:room", config(json!({}))).await;
    let jp = py.join("realtime:room", config(json!({}))).await;
    py.send_text(&format!(r#"{{"event":"broadcast","payload":{{"type":"broadcast","event":"e","payload":{{"a":1}}}},"topic":"realtime:room","ref":"3","join_ref":"{jp}"}}"#)).await;
    let Frame::Text(_, raw) = js.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"[null,null,"realtime:room","broadcast",{"type":"broadcast","event":"e","payload":{"a":1}}]"#
    );
    py.expect_silence(QUIET).await;
}

#[tokio::test]
async fn topics_are_isolated() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a.join("realtime:a", config(json!({}))).await;
    b.join("realtime:b", config(json!({}))).await;
    a.push(
        Some(&ja),
        Some("2"),
        "realtime:a",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}}),
    )
    .await;
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn oversized_payload_with_ack_gets_the_error_reply_and_is_not_sent() {
    let s = Server::start_with(&[("MAX_PAYLOAD_SIZE_KB", "1")]).await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a.join("realtime:r", config(json!({"broadcast": {"ack": true}}))).await;
    b.join("realtime:r", config(json!({}))).await;
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(3000));
    a.send_binary(user_broadcast_push(&ja, "5", "realtime:r", "e", true, big.as_bytes()))
        .await;
    assert_eq!(
        a.recv().await.payload(),
        &json!({"response": {"error": "payload_size_exceeded"}, "status": "error"})
    );
    b.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_others_keep_receiving() {
    let s = Server::start_with(&[("OUTBOUND_QUEUE_MESSAGES", "1000"), ("OUTBOUND_QUEUE_BYTES", "4000000")]).await;
    let mut publisher = s.connect("2.0.0").await;
    let mut fast = s.connect("2.0.0").await;
    let mut slow = s.connect("2.0.0").await;
    let jp = publisher.join("realtime:r", config(json!({}))).await;
    fast.join("realtime:r", config(json!({}))).await;
    slow.join("realtime:r", config(json!({}))).await;
    // `slow` stops reading; its socket buffers fill, then its outbox overflows.
    let payload = format!(r#"{{"x":"{}"}}"#, "z".repeat(8000));
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 3000 {
            match fast.recv_within(Duration::from_secs(10)).await {
                Some(Frame::Binary(_)) => got += 1,
                other => panic!("fast consumer lost frames after {got}: {other:?}"),
            }
        }
        got
    });
    for i in 0..3000 {
        publisher
            .send_binary(user_broadcast_push(
                &jp,
                &i.to_string(),
                "realtime:r",
                "e",
                true,
                payload.as_bytes(),
            ))
            .await;
        // Paced so that a reading client keeps up; the one that never reads cannot.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(reader.await.unwrap(), 3000);
    // The slow one was cut off: after whatever was in flight, its socket closes.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Frame::Close(_) = slow.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow consumer was not disconnected");
}
