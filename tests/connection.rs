//! Connection-level behaviour: upgrade auth and errors, vsn, heartbeats, pings,
//! malformed and oversized frames, idle and dead peers.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn upgrade_errors_use_supabase_statuses_and_texts() {
    let s = Server::start().await;
    let expired = token("anon", -10);
    let no_role = claims_token(json!({"exp": now() + 60}));
    let wrong_sig = realtime::auth::sign_hs256(
        "another-secret-another-secret-another",
        &json!({"role":"anon","exp": now() + 60}),
    )
    .unwrap();
    let cases = [
        (
            "/realtime/v1/websocket?vsn=2.0.0".to_string(),
            401,
            r#"{"error":"API key is missing"}"#,
        ),
        (
            "/realtime/v1/websocket?apikey=not-a-jwt".into(),
            401,
            r#"{"error":"The token provided is not a valid JWT"}"#,
        ),
        (
            format!("/realtime/v1/websocket?apikey={expired}"),
            401,
            r#"{"error":"Token has expired"}"#,
        ),
        (
            format!("/realtime/v1/websocket?apikey={no_role}"),
            401,
            r#"{"error":"Fields `role` and `exp` are required in JWT"}"#,
        ),
        (
            format!("/realtime/v1/websocket?apikey={wrong_sig}"),
            401,
            r#"{"error":"Failed to validate JWT signature"}"#,
        ),
        (
            format!("/realtime/v1/websocket?apikey={}&vsn=3.0.0", token("anon", 60)),
            403,
            "",
        ),
    ];
    for (path, status, body) in cases {
        let (got_status, got_body) = s.refused_upgrade(&path, &[]).await;
        assert_eq!((got_status, got_body.as_str()), (status, body), "{path}");
    }
}

#[tokio::test]
async fn x_api_key_header_wins_over_query() {
    let s = Server::start().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.ws_url("apikey=bogus&vsn=2.0.0"),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-api-key", token("anon", 60).parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade with header key");
    assert_eq!(resp.status(), 101);
    ws.close(None).await.ok();
}

#[tokio::test]
async fn both_paths_and_default_vsn() {
    let s = Server::start().await;
    let t = token("anon", 60);
    let mut c = s
        .connect_url(&format!("ws://127.0.0.1:{}/socket/websocket?apikey={t}", s.port), true)
        .await
        .unwrap();
    // No vsn → 1.0.0: object frames.
    c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await;
    let Frame::Text(_, raw) = c.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"phoenix"}"#
    );
}

#[tokio::test]
async fn heartbeats_in_both_versions() {
    let s = Server::start().await;
    let mut v2 = s.connect("2.0.0").await;
    v2.send_text(r#"[null,"9","phoenix","heartbeat",{}]"#).await;
    let Frame::Text(_, raw) = v2.recv().await else { panic!() };
    assert_eq!(raw, r#"[null,"9","phoenix","phx_reply",{"response":{},"status":"ok"}]"#);

    // py: ref and join_ref null.
    let mut v1 = s.connect("1.0.0").await;
    v1.send_text(r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#)
        .await;
    let Frame::Text(_, raw) = v1.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":null,"topic":"phoenix"}"#
    );
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_socket_keeps_working() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    for bad in [
        "not json",
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#,
        "[1,2]",
        r#"[null,null,"t","e"]"#,
        "",
    ] {
        c.send_text(bad).await;
    }
    c.send_binary(vec![3, 200, 200]).await;
    c.send_binary(vec![9, 0, 0]).await;
    c.send_text(r#"[null,"5","phoenix","heartbeat",{}]"#).await;
    let f = c.recv().await;
    assert_eq!(f.json()[1], "5", "only the valid heartbeat is answered: {f:?}");

    // A binary frame on a V1 socket is dropped too.
    let mut v1 = s.connect("1.0.0").await;
    v1.send_binary(user_broadcast_push("1", "1", "realtime:x", "e", true, b"{}"))
        .await;
    v1.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#)
        .await;
    assert_eq!(v1.recv().await.json()[1], "2");
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let s = Server::start_with(&[("MAX_FRAME_SIZE", "1000")]).await;
    let mut other = s.connect("2.0.0").await;
    let mut c = s.connect("2.0.0").await;
    c.send_text(&format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(2000)
    ))
    .await;
    assert!(
        matches!(c.recv().await, Frame::Close(_)),
        "oversized frame ends the connection"
    );
    other.send_text(r#"[null,"2","phoenix","heartbeat",{}]"#).await;
    assert_eq!(other.recv().await.json()[1], "2", "other clients keep being served");
}

#[tokio::test]
async fn a_huge_announced_frame_length_does_not_take_the_server_down() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    // A raw frame header announcing 2^62 bytes, masked, with no payload.
    let mut raw = vec![0x82u8, 0xff];
    raw.extend_from_slice(&(1u64 << 62).to_be_bytes());
    raw.extend_from_slice(&[1, 2, 3, 4]);
    let stream = c.ws.get_mut();
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = stream {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(&raw).await.unwrap();
    }
    let mut fresh = s.connect("2.0.0").await;
    fresh.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(fresh.recv().await.json()[1], "1");
}

#[tokio::test]
async fn websocket_pings_are_answered() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.ws.send(Message::Ping(b"are-you-there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"are-you-there");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let s = Server::start_with(&[("IDLE_TIMEOUT_MS", "600"), ("PING_INTERVAL_MS", "200")]).await;
    let mut c = s.connect("2.0.0").await;
    // tungstenite answers pings, so only the idle rule can close this socket.
    let closed = c.recv_within(Duration::from_secs(3)).await;
    assert_eq!(closed, Some(Frame::Close(Some(1000))));
}

#[tokio::test]
async fn server_pings_a_silent_client() {
    let s = Server::start_with(&[("PING_INTERVAL_MS", "200")]).await;
    let mut c = s.connect("2.0.0").await;
    let got_ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match futures_util::StreamExt::next(&mut c.ws).await {
                Some(Ok(Message::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert_eq!(got_ping, Ok(true));
}

/// Threads of process `pid` named as the runtime names its workers.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn worker_threads_sets_how_many_threads_serve_connections() {
    for n in [1usize, 3] {
        let s = Server::start_with(&[("WORKER_THREADS", &n.to_string())]).await;
        // Still serving on one thread.
        let mut c = s.connect("2.0.0").await;
        c.join("realtime:threads", serde_json::json!({})).await;
        assert_eq!(worker_threads(s.pid()), n);
    }
}
