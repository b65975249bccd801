//! Once per cluster, on Redis and on NATS: `channel.occupied`/`channel.vacated` come from
//! one node for the whole cluster; a node killed with `kill -9` has its presence leaves
//! (and the vacating of topics only it occupied) reported once by another node; server-set
//! presence is cluster state (listed and deleted on any node, counted cluster-wide, and
//! kept until its TTL when the node that received it dies).

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::engine_server::{EngineServer, Kind};
use common::{config, token, Client, Server};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Nodes report 2 s after they start ([`realtime::cluster::liveness::READY_AFTER`]).
const SETTLE: Duration = Duration::from_millis(2300);

async fn node(engine: &EngineServer, name: &str, webhook: &str, extra: &[(&str, &str)]) -> Server {
    let url = engine.url();
    let mut env = vec![
        ("CLUSTER_URL", url.as_str()),
        ("NODE_ID", name),
        ("CLUSTER_UNSUBSCRIBE_DELAY_MS", "300"),
        ("WEBHOOK_URL", webhook),
        ("WEBHOOK_SECRET", "s"),
        ("WEBHOOK_BATCH_MS", "50"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env).await
}

/// A receiver that answers 200 and hands over every batch's events.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Vec<Value>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap();
                    if raw.len() >= i + 4 + len {
                        let batch: Value = serde_json::from_slice(&raw[i + 4..i + 4 + len]).unwrap();
                        let _ = tx.send(batch["events"].as_array().unwrap().clone());
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// `type topic [key]` of each event.
fn label(e: &Value) -> String {
    let mut s = format!("{} {}", e["type"].as_str().unwrap(), e["topic"].as_str().unwrap());
    if let Some(k) = e["key"].as_str() {
        s.push(' ');
        s.push_str(k);
    }
    s
}

/// Collects events until every one of `wanted` was seen (at most `within`), then for
/// `quiet` more, so duplicates have time to show.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Vec<Value>>,
    all: &mut Vec<String>,
    wanted: &[&str],
    within: Duration,
    quiet: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !wanted.iter().all(|w| all.iter().any(|l| l == w)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(events)) => all.extend(events.iter().map(label)),
            _ => panic!("missing some of {wanted:?}; got {all:?}"),
        }
    }
    let until = tokio::time::Instant::now() + quiet;
    while let Ok(Some(events)) = tokio::time::timeout_at(until, rx.recv()).await {
        all.extend(events.iter().map(label));
    }
}

fn count(all: &[String], label: &str) -> usize {
    all.iter().filter(|l| *l == label).count()
}

async fn track(c: &mut Client, topic: &str, key: &str) -> String {
    let j = c
        .join(topic, config(json!({"presence": {"key": key, "enabled": true}})))
        .await;
    c.recv_event("presence_state").await;
    c.push(
        Some(&j),
        Some("t"),
        topic,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {}}),
    )
    .await;
    j
}

/// Waits for a `presence_diff` whose `side` holds `key`.
async fn diff_with(c: &mut Client, side: &str, key: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = c.recv_within(left).await else {
            return false;
        };
        if f.event() == "presence_diff" && f.payload()[side].get(key).is_some() {
            return true;
        }
    }
}

async fn call(s: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let key = token("service_role", 60);
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, resp) = s.http(method, path, &[("apikey", &key)], &body).await;
    (status, serde_json::from_slice(&resp).unwrap_or(Value::Null))
}

/// Polls GET until `pred` holds for the body (at most `within`).
async fn get_until(s: &Server, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = call(s, "GET", path, Value::Null).await;
        assert_eq!(status, 200);
        if pred(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel_and_presence_events_are_sent_once_per_cluster(kind: Kind) {
    let engine = EngineServer::start(kind).await;
    let (url, mut rx) = receiver().await;
    let a = node(&engine, "a", &url, &[]).await;
    let mut b = node(&engine, "b", &url, &[]).await;
    tokio::time::sleep(SETTLE).await;

    // Joined on both nodes, left on both: one occupied, one vacated.
    let mut pa = a.connect("2.0.0").await;
    let ja = pa.join("realtime:pair", config(json!({}))).await;
    let mut pb = b.connect("2.0.0").await;
    let jb = pb.join("realtime:pair", config(json!({}))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pa.push(Some(&ja), Some("l"), "realtime:pair", "phx_leave", json!({})).await;
    pb.push(Some(&jb), Some("l"), "realtime:pair", "phx_leave", json!({})).await;

    // alice on a, bob on b; carol on b alone.
    let mut ca = a.connect("2.0.0").await;
    track(&mut ca, "realtime:room", "alice").await;
    let mut cb = b.connect("2.0.0").await;
    track(&mut cb, "realtime:room", "bob").await;
    track(&mut cb, "realtime:solo", "carol").await;
    assert!(diff_with(&mut ca, "joins", "bob", Duration::from_secs(3)).await);
    let mut all = Vec::new();
    collect(
        &mut rx,
        &mut all,
        &[
            "channel.vacated pair",
            "presence.join solo carol",
            "presence.join room bob",
            "presence.join room alice",
        ],
        Duration::from_secs(5),
        Duration::from_millis(500),
    )
    .await;

    // b dies with bob and carol: a reports their leaves, and that solo is vacated.
    b.kill();
    assert!(diff_with(&mut ca, "leaves", "bob", Duration::from_secs(8)).await);
    collect(
        &mut rx,
        &mut all,
        &["presence.leave room bob", "presence.leave solo carol", "channel.vacated solo"],
        Duration::from_secs(5),
        Duration::from_millis(1500),
    )
    .await;
    for once in [
        "channel.occupied pair",
        "channel.vacated pair",
        "channel.occupied room",
        "channel.occupied solo",
        "channel.vacated solo",
        "presence.join room alice",
        "presence.join room bob",
        "presence.join solo carol",
        "presence.leave room bob",
        "presence.leave solo carol",
    ] {
        assert_eq!(count(&all, once), 1, "{once} exactly once in {all:?}");
    }
    assert_eq!(count(&all, "channel.vacated room"), 0, "alice is still there: {all:?}");
    let at = |l: &str| all.iter().position(|x| x == l).unwrap();
    assert!(
        at("presence.leave solo carol") < at("channel.vacated solo"),
        "the leave comes before the vacating: {all:?}"
    );
}

async fn server_presence_is_cluster_state(kind: Kind) {
    let engine = EngineServer::start(kind).await;
    let (url, mut rx) = receiver().await;
    let limit = [("PRESENCE_SERVER_MAX_PER_TOPIC", "2")];
    let a = node(&engine, "a", &url, &limit).await;
    let mut b = node(&engine, "b", &url, &limit).await;
    tokio::time::sleep(SETTLE).await;

    // Posted on a to a topic with no member anywhere: listed on b, deleted through b.
    let hall = "/api/channels/hall/presence";
    let (status, _) = call(&a, "POST", hall, json!({"key": "cal", "ttl_seconds": 60})).await;
    assert_eq!(status, 200);
    let body = get_until(&b, hall, Duration::from_secs(3), |b| b["online"]["cal"].is_object()).await;
    assert_eq!(body["online"]["cal"]["metas"][0]["server"], true, "{body}");
    // The limit (2) counts both nodes' entries.
    let (status, _) = call(&b, "POST", hall, json!({"key": "pin", "ttl_seconds": 60})).await;
    assert_eq!(status, 200);
    get_until(&a, hall, Duration::from_secs(3), |b| b["online"]["pin"].is_object()).await;
    let (status, _) = call(&a, "POST", hall, json!({"key": "third", "ttl_seconds": 60})).await;
    assert_eq!(status, 422, "a third entry on the topic, wherever posted");
    let (status, _) = call(&b, "DELETE", "/api/channels/hall/presence/cal", Value::Null).await;
    assert_eq!(status, 204, "deleted on the node that did not receive it");
    get_until(&a, hall, Duration::from_secs(3), |b| b["online"].get("cal").is_none()).await;
    let (status, _) = call(&a, "DELETE", "/api/channels/hall/presence/cal", Value::Null).await;
    assert_eq!(status, 404, "gone everywhere");

    // Posted on b, which then dies: the entry stays on a until its TTL, then leaves.
    let mut ca = a.connect("2.0.0").await;
    ca.join(
        "realtime:desk",
        config(json!({"presence": {"key": "", "enabled": true}})),
    )
    .await;
    ca.recv_event("presence_state").await;
    let (status, _) = call(
        &b,
        "POST",
        "/api/channels/desk/presence",
        json!({"key": "dj", "meta": {"set": "late"}, "ttl_seconds": 8}),
    )
    .await;
    assert_eq!(status, 200);
    let posted = tokio::time::Instant::now();
    assert!(diff_with(&mut ca, "joins", "dj", Duration::from_secs(3)).await);
    b.kill();
    // About 4 s later b is gone and a holds the entry: still online on a.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let (_, body) = call(&a, "GET", "/api/channels/desk/presence", Value::Null).await;
    let meta = &body["online"]["dj"]["metas"][0];
    assert_eq!((&meta["set"], &meta["server"]), (&json!("late"), &json!(true)), "{body}");
    assert!(posted.elapsed() < Duration::from_secs(8), "checked before the TTL");
    // (Taking it over showed as a leave and a join under a new phx_ref; the TTL is a
    // leave alone.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ca.recv_within(left).await.expect("dj leaves at its TTL");
        if f.event() == "presence_diff"
            && f.payload()["leaves"].get("dj").is_some()
            && f.payload()["joins"].get("dj").is_none()
        {
            break;
        }
    }
    assert!(
        posted.elapsed() >= Duration::from_millis(7700),
        "not before its TTL: {:?}",
        posted.elapsed()
    );
    let (_, body) = call(&a, "GET", "/api/channels/desk/presence", Value::Null).await;
    assert!(body["online"].get("dj").is_none(), "{body}");

    let mut all = Vec::new();
    collect(
        &mut rx,
        &mut all,
        &["presence.leave desk dj"],
        Duration::from_secs(3),
        Duration::from_millis(500),
    )
    .await;
    for once in [
        "presence.join hall cal",
        "presence.leave hall cal",
        "presence.join hall pin",
        "presence.join desk dj",
        "presence.leave desk dj",
    ] {
        assert_eq!(count(&all, once), 1, "{once} exactly once in {all:?}");
    }
}

per_engine!(
    channel_and_presence_events_are_sent_once_per_cluster,
    server_presence_is_cluster_state
);
