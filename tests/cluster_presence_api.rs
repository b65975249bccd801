//! The presence API across two nodes on one `redis-server`: a server-set entry is held by
//! the node that received the POST, replicated like its sockets' presence, and taken over
//! by another node when that one dies.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::redis_server::Redis;
use common::{config, token, Client, Server};
use serde_json::{json, Value};

async fn node(redis: &Redis, name: &str) -> Server {
    Server::start_with(&[
        ("CLUSTER_URL", &redis.url()),
        ("NODE_ID", name),
        ("CLUSTER_UNSUBSCRIBE_DELAY_MS", "300"),
    ])
    .await
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

/// Waits for a `presence_diff` whose `side` holds `key`; its first meta.
async fn diff_with(c: &mut Client, side: &str, key: &str, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = c.recv_within(left).await?;
        if f.event() == "presence_diff" {
            if let Some(metas) = f.payload()[side].get(key) {
                return Some(metas["metas"][0].clone());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_entry_posted_to_one_node_shows_on_the_other_and_outlives_its_node() {
    let redis = Redis::start().await;
    let mut a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let topic = "realtime:wedding";
    let cfg = config(json!({"presence": {"key": "", "enabled": true}}));
    let mut on_a = a.connect("2.0.0").await;
    on_a.join(topic, cfg.clone()).await;
    on_a.recv_event("presence_state").await;
    let mut on_b = b.connect("2.0.0").await;
    on_b.join(topic, cfg).await;
    on_b.recv_event("presence_state").await;

    let path = "/api/channels/wedding/presence";
    let (status, _) = call(
        &a,
        "POST",
        path,
        json!({"key": "dj", "meta": {"status": "setting up"}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200);
    let meta = diff_with(&mut on_b, "joins", "dj", Duration::from_secs(3)).await;
    assert_eq!(meta.unwrap()["server"], true, "replicated to b");
    let (_, body) = call(&b, "GET", path, Value::Null).await;
    assert_eq!(body["online"]["dj"]["metas"][0]["status"], "setting up");
    let (_, body) = call(&b, "GET", "/api/channels?prefix=wedding", Value::Null).await;
    assert_eq!(
        body["channels"],
        json!([{"topic": "wedding", "private": false, "members": 1, "presence": 1}]),
        "members are b's own, presence is the cluster's"
    );

    // Removed on its own node: leaves on b; a TTL set on b leaves on a.
    let (status, _, _) = a
        .http(
            "DELETE",
            "/api/channels/wedding/presence/dj",
            &[("apikey", &token("service_role", 60))],
            b"",
        )
        .await;
    assert_eq!(status, 204);
    assert!(diff_with(&mut on_b, "leaves", "dj", Duration::from_secs(3))
        .await
        .is_some());
    let (status, _) = call(&b, "POST", path, json!({"key": "cal", "ttl_seconds": 1})).await;
    assert_eq!(status, 200);
    assert!(diff_with(&mut on_a, "joins", "cal", Duration::from_secs(3))
        .await
        .is_some());
    assert!(diff_with(&mut on_a, "leaves", "cal", Duration::from_secs(3))
        .await
        .is_some());
    let (_, body) = call(&a, "GET", path, Value::Null).await;
    assert!(body["last_seen"]["cal"].is_string(), "{body}");

    // The node that received it dies: b takes the entry over (a leave and a join under a
    // new phx_ref) and keeps it until its TTL.
    let (status, _) = call(&a, "POST", path, json!({"key": "florist", "ttl_seconds": 3600})).await;
    assert_eq!(status, 200);
    assert!(diff_with(&mut on_b, "joins", "florist", Duration::from_secs(3))
        .await
        .is_some());
    a.kill();
    let meta = diff_with(&mut on_b, "joins", "florist", Duration::from_secs(8)).await;
    assert_eq!(meta.unwrap()["server"], true, "taken over by b");
    let (_, body) = call(&b, "GET", path, Value::Null).await;
    assert!(body["online"]["florist"].is_object(), "{body}");
}

/// A receiver that answers 200 and hands over every batch's events.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<Value>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_webhooks_are_sent_once_per_cluster() {
    let redis = Redis::start().await;
    let (url, mut rx) = receiver().await;
    let env = |name: &'static str| {
        [
            ("CLUSTER_URL", redis.url()),
            ("NODE_ID", name.to_owned()),
            ("WEBHOOK_URL", url.clone()),
            ("WEBHOOK_SECRET", "s".to_owned()),
        ]
    };
    let (ea, eb) = (env("a"), env("b"));
    let a = Server::start_with(&ea.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let b = Server::start_with(&eb.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let topic = "realtime:lobby";
    let mut on_a = a.connect("2.0.0").await;
    let ja = on_a
        .join(topic, config(json!({"presence": {"key": "alice", "enabled": true}})))
        .await;
    on_a.recv_event("presence_state").await;
    let mut on_b = b.connect("2.0.0").await;
    on_b.join(topic, config(json!({"presence": {"key": "bob", "enabled": true}})))
        .await;
    on_b.recv_event("presence_state").await;
    on_a.push(
        Some(&ja),
        Some("3"),
        topic,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {}}),
    )
    .await;
    // Both nodes see alice's join as a diff; only her node reports it.
    assert!(diff_with(&mut on_b, "joins", "alice", Duration::from_secs(3))
        .await
        .is_some());
    let (status, _) = call(
        &b,
        "POST",
        "/api/channels/lobby/presence",
        json!({"key": "cal", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(diff_with(&mut on_a, "joins", "cal", Duration::from_secs(3))
        .await
        .is_some());
    // Batches go out within 250 ms; wait well past that for any duplicate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut joins = Vec::new();
    while let Ok(events) = rx.try_recv() {
        for e in events {
            if e["type"] == "presence.join" {
                joins.push(e["key"].as_str().unwrap().to_owned());
            }
        }
    }
    joins.sort();
    assert_eq!(
        joins,
        ["alice", "cal"],
        "one presence.join per entry across the cluster"
    );
}
