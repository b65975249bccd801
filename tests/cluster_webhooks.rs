//! Once per cluster, on Redis and on NATS, with the real binary:
//! * `channel.occupied`/`channel.vacated` come from one node (the topic's reporter) for the
//!   whole cluster, not from each node with members;
//! * a node killed with `kill -9` has its presence leaves (and the vacating of topics only
//!   it occupied) reported once, by one of the survivors;
//! * server-set presence is cluster state: listed and deleted on any node, counted
//!   cluster-wide, and kept until its TTL when the node that received it dies.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::engine_server::{EngineServer, Kind};
use common::webhook_receiver::{receiver, Received};
use common::{config, diff_with, service_call, track, Client, Server};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Nodes report 2 s after they start ([`realtime::cluster::liveness::READY_AFTER`]), from
/// the next 250 ms heartbeat tick.
const SETTLE: Duration = Duration::from_millis(2600);

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
    rx: &mut mpsc::UnboundedReceiver<Received>,
    all: &mut Vec<String>,
    wanted: &[&str],
    within: Duration,
    quiet: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !wanted.iter().all(|w| all.iter().any(|l| l == w)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => all.extend(r.events().iter().map(label)),
            _ => panic!("missing some of {wanted:?}; got {all:?}"),
        }
    }
    let until = tokio::time::Instant::now() + quiet;
    while let Ok(Some(r)) = tokio::time::timeout_at(until, rx.recv()).await {
        all.extend(r.events().iter().map(label));
    }
}

/// Asserts each of `labels` was sent exactly once.
fn once(all: &[String], labels: &[&str]) {
    for label in labels {
        let n = all.iter().filter(|l| l == label).count();
        assert_eq!(n, 1, "{label} exactly once in {all:?}");
    }
}

/// Joins `topic` with presence under `key` and tracks it.
async fn join_tracked(c: &mut Client, topic: &str, key: &str) {
    let j = c
        .join(topic, config(json!({"presence": {"key": key, "enabled": true}})))
        .await;
    c.recv_event("presence_state").await;
    track(c, &j, topic, json!({})).await;
}

/// Polls GET until `pred` holds for the body (at most `within`).
async fn get_until(s: &Server, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = service_call(s, "GET", path, Value::Null).await;
        assert_eq!(status, 200);
        if pred(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel_events_are_sent_once_per_cluster(kind: Kind) {
    let engine = EngineServer::start(kind).await;
    let (url, mut rx) = receiver(vec![]).await;
    let a = node(&engine, "a", &url, &[]).await;
    let b = node(&engine, "b", &url, &[]).await;
    tokio::time::sleep(SETTLE).await;

    // `pair`: joined on both nodes, then left on both. `room`: joined on both, kept.
    let mut on_a = a.connect("2.0.0").await;
    let mut on_b = b.connect("2.0.0").await;
    let pair_a = on_a.join("realtime:pair", config(json!({}))).await;
    on_a.join("realtime:room", config(json!({}))).await;
    let pair_b = on_b.join("realtime:pair", config(json!({}))).await;
    on_b.join("realtime:room", config(json!({}))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_a.push(Some(&pair_a), Some("l"), "realtime:pair", "phx_leave", json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_b.push(Some(&pair_b), Some("l"), "realtime:pair", "phx_leave", json!({}))
        .await;

    let mut all = Vec::new();
    collect(
        &mut rx,
        &mut all,
        &["channel.occupied room", "channel.vacated pair"],
        Duration::from_secs(5),
        Duration::from_millis(1000),
    )
    .await;
    once(
        &all,
        &["channel.occupied pair", "channel.vacated pair", "channel.occupied room"],
    );
    assert!(
        !all.iter().any(|l| l == "channel.vacated room"),
        "room is still occupied: {all:?}"
    );
    let at = |l: &str| all.iter().position(|x| x == l).unwrap();
    assert!(at("channel.occupied pair") < at("channel.vacated pair"), "{all:?}");
}

async fn a_dead_nodes_presence_leaves_are_sent_once_per_cluster(kind: Kind) {
    let engine = EngineServer::start(kind).await;
    let (url, mut rx) = receiver(vec![]).await;
    // Three nodes: after b dies two survivors could report, and only one may.
    let a = node(&engine, "a", &url, &[]).await;
    let mut b = node(&engine, "b", &url, &[]).await;
    let _c = node(&engine, "c", &url, &[]).await;
    tokio::time::sleep(SETTLE).await;

    // alice on a and bob on b share `room`; carol on b is alone in `solo`. Ten more
    // topics with members on a and b: b reports some of them (2 in 3 chances each), and
    // their new reporter must not say again that they are occupied.
    let many: Vec<String> = (0..10).map(|i| format!("realtime:t{i}")).collect();
    let mut on_a = a.connect("2.0.0").await;
    join_tracked(&mut on_a, "realtime:room", "alice").await;
    let mut on_b = b.connect("2.0.0").await;
    join_tracked(&mut on_b, "realtime:room", "bob").await;
    join_tracked(&mut on_b, "realtime:solo", "carol").await;
    let occupied: Vec<String> = many.iter().map(|t| format!("channel.occupied {}", &t[9..])).collect();
    let occupied: Vec<&str> = occupied.iter().map(String::as_str).collect();
    assert!(diff_with(&mut on_a, "joins", "bob", Duration::from_secs(3))
        .await
        .is_some());
    for topic in &many {
        on_a.join(topic, config(json!({}))).await;
        on_b.join(topic, config(json!({}))).await;
    }
    let mut all = Vec::new();
    collect(
        &mut rx,
        &mut all,
        &[
            "presence.join solo carol",
            "presence.join room bob",
            "presence.join room alice",
        ],
        Duration::from_secs(5),
        Duration::from_millis(300),
    )
    .await;
    collect(&mut rx, &mut all, &occupied, Duration::from_secs(3), Duration::ZERO).await;

    // b dies with bob and carol: one survivor reports their leaves, and that solo is
    // vacated.
    b.kill();
    assert!(diff_with(&mut on_a, "leaves", "bob", Duration::from_secs(8))
        .await
        .is_some());
    collect(
        &mut rx,
        &mut all,
        &[
            "presence.leave room bob",
            "presence.leave solo carol",
            "channel.vacated solo",
        ],
        Duration::from_secs(5),
        Duration::from_millis(1500),
    )
    .await;
    once(
        &all,
        &[
            "channel.occupied room",
            "channel.occupied solo",
            "channel.vacated solo",
            "presence.join room alice",
            "presence.join room bob",
            "presence.join solo carol",
            "presence.leave room bob",
            "presence.leave solo carol",
        ],
    );
    once(&all, &occupied);
    assert!(
        !all.iter()
            .any(|l| l == "channel.vacated room" || l.starts_with("channel.vacated t")),
        "a is still there: {all:?}"
    );
    let at = |l: &str| all.iter().position(|x| x == l).unwrap();
    assert!(
        at("presence.leave solo carol") < at("channel.vacated solo"),
        "the leave comes before the vacating: {all:?}"
    );
}

async fn server_presence_is_cluster_state(kind: Kind) {
    let engine = EngineServer::start(kind).await;
    let (url, mut rx) = receiver(vec![]).await;
    let limit = [("PRESENCE_SERVER_MAX_PER_TOPIC", "2")];
    let a = node(&engine, "a", &url, &limit).await;
    let mut b = node(&engine, "b", &url, &limit).await;
    tokio::time::sleep(SETTLE).await;

    // Posted on a to a topic with no member anywhere: listed on b, deleted through b.
    let hall = "/api/channels/hall/presence";
    let (status, _) = service_call(&a, "POST", hall, json!({"key": "cal", "ttl_seconds": 60})).await;
    assert_eq!(status, 200);
    let body = get_until(&b, hall, Duration::from_secs(3), |b| b["online"]["cal"].is_object()).await;
    assert_eq!(body["online"]["cal"]["metas"][0]["server"], true, "{body}");
    // Each step's webhook is awaited: a join and a leave within one batch cancel out.
    let mut all = Vec::new();
    let quick = (Duration::from_secs(3), Duration::ZERO);
    collect(&mut rx, &mut all, &["presence.join hall cal"], quick.0, quick.1).await;
    // The limit (2) counts both nodes' entries.
    let (status, _) = service_call(&b, "POST", hall, json!({"key": "pin", "ttl_seconds": 60})).await;
    assert_eq!(status, 200);
    get_until(&a, hall, Duration::from_secs(3), |b| b["online"]["pin"].is_object()).await;
    collect(&mut rx, &mut all, &["presence.join hall pin"], quick.0, quick.1).await;
    let (status, _) = service_call(&a, "POST", hall, json!({"key": "third", "ttl_seconds": 60})).await;
    assert_eq!(status, 422, "a third entry on the topic, wherever posted");
    let (status, _) = service_call(&b, "DELETE", "/api/channels/hall/presence/cal", Value::Null).await;
    assert_eq!(status, 204, "deleted on the node that did not receive it");
    get_until(&a, hall, Duration::from_secs(3), |b| b["online"].get("cal").is_none()).await;
    let (status, _) = service_call(&a, "DELETE", "/api/channels/hall/presence/cal", Value::Null).await;
    assert_eq!(status, 404, "gone everywhere");
    collect(&mut rx, &mut all, &["presence.leave hall cal"], quick.0, quick.1).await;

    // Posted on b to a topic with no member anywhere, then a first member joins on a: it
    // gets the entry (b stays subscribed to the topics it holds entries of).
    let (status, _) = service_call(
        &b,
        "POST",
        "/api/channels/lobby/presence",
        json!({"key": "host", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200);
    let mut late = a.connect("2.0.0").await;
    late.join(
        "realtime:lobby",
        config(json!({"presence": {"key": "", "enabled": true}})),
    )
    .await;
    let state = late.recv_event("presence_state").await;
    if state.payload().get("host").is_none() {
        let joined = diff_with(&mut late, "joins", "host", Duration::from_secs(3)).await;
        assert!(joined.is_some(), "a late member on another node gets the entry");
    }

    // Posted on b, which then dies: the entry stays on a until its TTL, then leaves.
    let mut ca = a.connect("2.0.0").await;
    ca.join(
        "realtime:desk",
        config(json!({"presence": {"key": "", "enabled": true}})),
    )
    .await;
    ca.recv_event("presence_state").await;
    let (status, _) = service_call(
        &b,
        "POST",
        "/api/channels/desk/presence",
        json!({"key": "dj", "meta": {"set": "late"}, "ttl_seconds": 8}),
    )
    .await;
    assert_eq!(status, 200);
    let posted = tokio::time::Instant::now();
    let posted_ref = diff_with(&mut ca, "joins", "dj", Duration::from_secs(3)).await.unwrap()["phx_ref"].clone();
    // (b's own join event is out before b dies: a node's unsent batch dies with it.)
    collect(&mut rx, &mut all, &["presence.join desk dj"], quick.0, quick.1).await;
    b.kill();
    // About 4 s later b is gone and a holds the entry under a new phx_ref: members get
    // that join before (or with) the old one's leave, so the key never shows as gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let adopted_ref = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ca.recv_within(left).await.expect("dj taken over");
        let (joins, leaves) = (&f.payload()["joins"]["dj"], &f.payload()["leaves"]["dj"]);
        if f.event() != "presence_diff" || (joins.is_null() && leaves.is_null()) {
            continue;
        }
        assert!(!joins.is_null(), "dj never shows as gone: {}", f.payload());
        break joins["metas"][0]["phx_ref"].clone();
    };
    assert_ne!(adopted_ref, posted_ref);
    let (_, body) = service_call(&a, "GET", "/api/channels/desk/presence", Value::Null).await;
    let meta = &body["online"]["dj"]["metas"][0];
    assert_eq!(
        (&meta["set"], &meta["server"]),
        (&json!("late"), &json!(true)),
        "{body}"
    );
    assert!(posted.elapsed() < Duration::from_secs(8), "checked before the TTL");
    // It leaves at the TTL it had left (the old phx_ref's leave may come first).
    loop {
        let left = diff_with(&mut ca, "leaves", "dj", Duration::from_secs(5)).await;
        if left.expect("dj leaves at its TTL")["phx_ref"] == adopted_ref {
            break;
        }
    }
    assert!(
        posted.elapsed() >= Duration::from_millis(7700),
        "not before its TTL: {:?}",
        posted.elapsed()
    );
    let (_, body) = service_call(&a, "GET", "/api/channels/desk/presence", Value::Null).await;
    assert!(body["online"].get("dj").is_none(), "{body}");

    collect(
        &mut rx,
        &mut all,
        &["presence.leave desk dj"],
        Duration::from_secs(3),
        Duration::from_millis(500),
    )
    .await;
    once(
        &all,
        &[
            "presence.join hall cal",
            "presence.leave hall cal",
            "presence.join hall pin",
            "presence.join desk dj",
            "presence.leave desk dj",
        ],
    );
}

per_engine!(
    channel_events_are_sent_once_per_cluster,
    a_dead_nodes_presence_leaves_are_sent_once_per_cluster,
    server_presence_is_cluster_state
);
