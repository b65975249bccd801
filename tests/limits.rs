//! Supabase's limits with their client-visible texts (protocol.md §11), each set low
//! through its setting, and limit profiles chosen by a JWT claim.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Fast rate windows for tests: 10 buckets of 100 ms (Supabase: 12 of 5 s).
const FAST_RATES: [(&str, &str); 2] = [("RATE_TICK_MS", "100"), ("RATE_WINDOW_BUCKETS", "10")];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST_RATES.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Asserts the channel is shut down with `system` error `message`, then `phx_close`.
async fn expect_shutdown(c: &mut Client, topic: &str, message: &str) {
    let sys = c.recv_event("system").await;
    assert_eq!(sys.json()[2], json!(topic));
    assert_eq!(sys.payload()["message"], message, "{sys:?}");
    assert_eq!(sys.payload()["status"], "error");
    let close = c.recv_event("phx_close").await;
    assert_eq!(close.json()[2], json!(topic));
}

async fn round_trip_works(s: &Server) {
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a.join("realtime:alive", config(json!({}))).await;
    b.join("realtime:alive", config(json!({}))).await;
    let r = a.make_ref();
    a.push(
        Some(&ja),
        Some(&r),
        "realtime:alive",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}}),
    )
    .await;
    assert_eq!(b.recv_event("broadcast").await.payload()["event"], "e");
}

#[tokio::test]
async fn tiers_from_a_claim_choose_the_channel_limit() {
    let dir = std::env::temp_dir().join(format!("realtime-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(
        &file,
        "[tiers.free]\nmax_channels_per_client = 3\n\n[tiers.paid]\nmax_channels_per_client = 10\n",
    )
    .unwrap();
    let s = Server::start_with(&[
        ("LIMITS_FILE", file.to_str().unwrap()),
        ("MAX_CHANNELS_PER_CLIENT", "20"),
    ])
    .await;
    for (tier, allowed) in [("free", 3), ("paid", 10), ("unknown", 20)] {
        let token = claims_token(json!({"role": "authenticated", "exp": now() + 600, "tier": tier}));
        let mut c = s.connect("2.0.0").await;
        for i in 0..allowed {
            let (_, r) = c
                .join_with(&format!("realtime:{tier}-{i}"), config(json!({})), Some(&token))
                .await;
            assert_eq!(r.payload()["status"], "ok", "{tier} join {i}: {r:?}");
        }
        let (_, r) = c
            .join_with(&format!("realtime:{tier}-over"), config(json!({})), Some(&token))
            .await;
        assert_eq!(
            r.payload()["response"]["reason"],
            "ChannelRateLimitReached: Too many channels",
            "{tier}: join {} is refused",
            allowed + 1
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_bad_limits_file_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("realtime-badlimits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(&file, "[tiers.free]\nmax_chanels = 3\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env_clear()
        .env("PORT", "0")
        .env("JWT_SECRET", "x".repeat(40))
        .env("LIMITS_FILE", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LIMITS_FILE") && stderr.contains("max_chanels"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn concurrent_connections() {
    let s = Server::start_with(&[("MAX_CONCURRENT_USERS", "2")]).await;
    let a = s.connect("2.0.0").await;
    let _b = s.connect("2.0.0").await;
    let key = token("anon", 600);
    let (status, body) = s
        .refused_upgrade(&format!("/realtime/v1/websocket?apikey={key}&vsn=2.0.0"), &[])
        .await;
    assert_eq!(
        (status, body.as_str()),
        (429, r#"{"error":"Too many connected users"}"#)
    );
    drop(a);
    // The slot frees once the server sees the close.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let url = s.ws_url(&format!("apikey={key}&vsn=2.0.0"));
        if s.connect_url(&url, false).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "a connection is accepted again after one closed");
}

#[tokio::test]
async fn joins_per_second_are_averaged_then_refused_and_the_socket_closed() {
    // 5 joins/s over a 1 s window.
    let s = Server::start_with(&env(&[("MAX_JOINS_PER_SECOND", "5")])).await;
    let mut c = s.connect("2.0.0").await;
    // A burst of 4 joins (40/s for an instant) averages 4/s: allowed.
    for i in 0..4 {
        c.join(&format!("realtime:burst-{i}"), config(json!({}))).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    c.join("realtime:burst-ok", config(json!({}))).await;
    // 8 more: 13 in the window, over 5/s once the next tick closes the bucket.
    for i in 0..8 {
        c.join(&format!("realtime:more-{i}"), config(json!({}))).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (_, r) = c.join_with("realtime:refused", config(json!({})), None).await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "ClientJoinRateLimitReached: Too many joins per second"
    );
    let closed = loop {
        match c.recv().await {
            Frame::Close(code) => break code,
            _ => continue,
        }
    };
    assert_eq!(closed, Some(1001));
    // New sockets are refused at connect while the rate is over.
    let key = token("anon", 600);
    let (status, body) = s
        .refused_upgrade(&format!("/realtime/v1/websocket?apikey={key}&vsn=2.0.0"), &[])
        .await;
    assert_eq!(
        (status, body.as_str()),
        (429, r#"{"error":"Too many joins per second"}"#)
    );
    // Once the window has passed, joins work again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:after", config(json!({}))).await;
}

#[tokio::test]
async fn events_per_second_close_the_sending_channel_and_refuse_rest() {
    let s = Server::start_with(&env(&[("MAX_EVENTS_PER_SECOND", "10")])).await;
    let topic = "realtime:busy";
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("1.0.0").await;
    let ja = a.join(topic, config(json!({}))).await;
    b.join(topic, config(json!({}))).await;
    // 8 broadcasts, each counted twice (sent + delivered to b): 16 in a 1 s window.
    for n in 0..8 {
        let r = a.make_ref();
        a.push(
            Some(&ja),
            Some(&r),
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"n": n}}),
        )
        .await;
    }
    for _ in 0..8 {
        b.recv_event("broadcast").await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = a.make_ref();
    a.push(
        Some(&ja),
        Some(&r),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}}),
    )
    .await;
    expect_shutdown(&mut a, topic, "Too many messages per second").await;
    b.expect_silence(Duration::from_millis(200)).await;

    let key = token("service_role", 600);
    let (status, headers, body) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("apikey", &key), ("content-type", "application/json")],
            br#"{"messages":[{"topic":"busy","event":"e","payload":{}}]}"#,
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body, br#"{"message":"You have exceeded your rate limit"}"#);
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("x-rate-limit").as_deref(), Some("10"));
    assert_eq!(header("x-rate-limit-remaining").as_deref(), Some("0"));
    assert!(header("x-rate-rolling").unwrap().parse::<u64>().unwrap() > 10);
}

#[tokio::test]
async fn presence_calls_per_client() {
    let s = Server::start_with(&env(&[("CLIENT_PRESENCE_MAX_CALLS", "5")])).await;
    let topic = "realtime:who";
    let mut c = s.connect("2.0.0").await;
    let j = c
        .join(topic, config(json!({"presence": {"key": "k", "enabled": true}})))
        .await;
    for n in 0..5 {
        let r = c.make_ref();
        c.push(
            Some(&j),
            Some(&r),
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"n": n}}),
        )
        .await;
        let reply = c.recv_event("phx_reply").await;
        assert_eq!(reply.payload()["status"], "ok");
    }
    let r = c.make_ref();
    c.push(
        Some(&j),
        Some(&r),
        topic,
        "presence",
        json!({"type": "presence", "event": "untrack"}),
    )
    .await;
    expect_shutdown(&mut c, topic, "Client presence rate limit exceeded").await;
    round_trip_works(&s).await;
}

#[tokio::test]
async fn presence_events_per_second_and_track_size() {
    let s = Server::start_with(&env(&[
        ("MAX_PRESENCE_EVENTS_PER_SECOND", "3"),
        ("MAX_PAYLOAD_SIZE_KB", "1"),
    ]))
    .await;
    let mut c = s.connect("2.0.0").await;
    let track = |n: usize| json!({"type": "presence", "event": "track", "payload": {"pad": "x".repeat(n)}});

    // Over the payload limit (1 KB = 1,500 bytes as Supabase compares).
    let j = c.join("realtime:big", config(json!({}))).await;
    let r = c.make_ref();
    c.push(Some(&j), Some(&r), "realtime:big", "presence", track(1600))
        .await;
    expect_shutdown(&mut c, "realtime:big", "Track message size exceeded").await;

    // 4 more presence pushes from other channels: 5 in the window, over 3/s at the tick.
    for i in 0..4 {
        let topic = format!("realtime:p{i}");
        let j = c.join(&topic, config(json!({}))).await;
        let r = c.make_ref();
        c.push(Some(&j), Some(&r), &topic, "presence", track(1)).await;
        assert_eq!(c.recv_event("phx_reply").await.payload()["status"], "ok");
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = c.make_ref();
    c.push(Some("x"), Some(&r), "realtime:p0", "presence", track(1)).await;
    expect_shutdown(&mut c, "realtime:p0", "Too many presence messages per second").await;
}
