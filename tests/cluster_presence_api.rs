//! The presence API across two nodes on one `redis-server`: a server-set entry is held by
//! the node that received the POST, replicated like its sockets' presence, and taken over
//! by another node when that one dies.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::redis_server::Redis;
use common::webhook_receiver::receiver;
use common::{config, diff_with, service_call, token, Server};
use serde_json::{json, Value};

async fn node(redis: &Redis, name: &str) -> Server {
    Server::start_with(&[
        ("CLUSTER_URL", &redis.url()),
        ("NODE_ID", name),
        ("CLUSTER_UNSUBSCRIBE_DELAY_MS", "300"),
    ])
    .await
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
    let (status, _) = service_call(
        &a,
        "POST",
        path,
        json!({"key": "dj", "meta": {"status": "setting up"}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200);
    let meta = diff_with(&mut on_b, "joins", "dj", Duration::from_secs(3)).await;
    assert_eq!(meta.unwrap()["server"], true, "replicated to b");
    let (_, body) = service_call(&b, "GET", path, Value::Null).await;
    assert_eq!(body["online"]["dj"]["metas"][0]["status"], "setting up");
    let (_, body) = service_call(&b, "GET", "/api/channels?prefix=wedding", Value::Null).await;
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
    let (status, _) = service_call(&b, "POST", path, json!({"key": "cal", "ttl_seconds": 1})).await;
    assert_eq!(status, 200);
    assert!(diff_with(&mut on_a, "joins", "cal", Duration::from_secs(3))
        .await
        .is_some());
    assert!(diff_with(&mut on_a, "leaves", "cal", Duration::from_secs(3))
        .await
        .is_some());
    let (_, body) = service_call(&a, "GET", path, Value::Null).await;
    assert!(body["last_seen"]["cal"].is_string(), "{body}");

    // The node that received it dies: b takes the entry over (a leave and a join under a
    // new phx_ref) and keeps it until its TTL.
    let (status, _) = service_call(&a, "POST", path, json!({"key": "florist", "ttl_seconds": 3600})).await;
    assert_eq!(status, 200);
    assert!(diff_with(&mut on_b, "joins", "florist", Duration::from_secs(3))
        .await
        .is_some());
    a.kill();
    let meta = diff_with(&mut on_b, "joins", "florist", Duration::from_secs(8)).await;
    assert_eq!(meta.unwrap()["server"], true, "taken over by b");
    let (_, body) = service_call(&b, "GET", path, Value::Null).await;
    assert!(body["online"]["florist"].is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_webhooks_are_sent_once_per_cluster() {
    let redis = Redis::start().await;
    let (url, mut rx) = receiver(vec![]).await;
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
    let (status, _) = service_call(
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
    while let Ok(r) = rx.try_recv() {
        for e in r.events() {
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
