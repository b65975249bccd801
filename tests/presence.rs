//! Presence: state on join, diffs to every member, update, untrack, leave, dead peers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn metas<'a>(map: &'a Value, key: &str) -> &'a Vec<Value> {
    map[key]["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("no metas for {key} in {map}"))
}

#[tokio::test]
async fn track_update_untrack_and_leave() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("1.0.0").await;
    let ja = a
        .join(
            "realtime:room",
            config(json!({"presence": {"key": "alice", "enabled": true}})),
        )
        .await;
    let st = a.recv_event("presence_state").await;
    assert_eq!(st.json(), &json!([ja, null, "realtime:room", "presence_state", {}]));

    a.push(
        Some(&ja),
        Some("3"),
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"u": 1}}),
    )
    .await;
    assert_eq!(
        a.recv().await.json(),
        &json!([ja, "3", "realtime:room", "phx_reply", {"response": {}, "status": "ok"}])
    );
    // The tracker gets the diff too.
    let d = a.recv_event("presence_diff").await;
    assert_eq!(d.json()[0], Value::Null);
    assert_eq!(d.payload()["leaves"], json!({}));
    let m = &metas(&d.payload()["joins"], "alice")[0];
    let r1 = m["phx_ref"].as_str().unwrap().to_owned();
    assert_eq!(r1.len(), 16);
    assert_eq!(m["u"], 1);

    // A late joiner (V1, py-shaped) gets the state.
    let jb = b
        .join(
            "realtime:room",
            config(json!({"presence": {"key": "bob", "enabled": true}})),
        )
        .await;
    let st = b.recv_event("presence_state").await;
    assert_eq!(metas(st.payload(), "alice")[0]["phx_ref"], json!(r1));

    // Same payload again: ok, no diff.
    a.push(
        Some(&ja),
        Some("4"),
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"u": 1}}),
    )
    .await;
    assert_eq!(a.recv().await.payload()["status"], "ok");
    b.expect_silence(Duration::from_millis(300)).await;

    // Changed payload: one diff, leave old + join new with phx_ref_prev.
    a.push(
        Some(&ja),
        Some("5"),
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"u": 2}}),
    )
    .await;
    let d = b.recv_event("presence_diff").await;
    assert_eq!(metas(&d.payload()["leaves"], "alice")[0]["phx_ref"], json!(r1));
    let joined = &metas(&d.payload()["joins"], "alice")[0];
    assert_eq!(joined["phx_ref_prev"], json!(r1));
    assert_eq!(joined["u"], 2);
    let r2 = joined["phx_ref"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // The tracker sees the same diff.
    assert_eq!(a.recv_event("presence_diff").await.payload(), d.payload());

    // py-style track without "type"; then untrack.
    b.push(
        Some(&jb),
        Some("6"),
        "realtime:room",
        "presence",
        json!({"event": "track", "payload": {"py": true}}),
    )
    .await;
    let d = a.recv_event("presence_diff").await;
    assert_eq!(metas(&d.payload()["joins"], "bob")[0]["py"], true);
    assert_eq!(b.recv_event("phx_reply").await.payload()["status"], "ok");
    assert_eq!(b.recv_event("presence_diff").await.payload(), d.payload());
    a.push(
        Some(&ja),
        Some("7"),
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "untrack"}),
    )
    .await;
    let d = b.recv_event("presence_diff").await;
    assert_eq!(metas(&d.payload()["leaves"], "alice")[0]["phx_ref"], json!(r2));
    assert_eq!(d.payload()["joins"], json!({}));
    assert_eq!(a.recv_event("presence_diff").await.payload(), d.payload());

    // Leaving removes bob's presence for the others.
    b.push(Some(&jb), Some("8"), "realtime:room", "phx_leave", json!({}))
        .await;
    let d = a.recv_event("presence_diff").await;
    assert!(d.payload()["leaves"]["bob"].is_object());
}

#[tokio::test]
async fn non_map_payload_is_refused_and_the_channel_stays() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let ja = a.join("realtime:test", config(json!({}))).await;
    a.push(
        Some(&ja),
        Some("5"),
        "realtime:test",
        "presence",
        json!({"type": "presence", "event": "track", "payload": "x"}),
    )
    .await;
    let Frame::Text(_, raw) = a.recv().await else { panic!() };
    assert_eq!(
        raw,
        format!(
            r#"["{ja}","5","realtime:test","phx_reply",{{"response":{{"reason":"Presence track payload must be a map"}},"status":"error"}}]"#
        )
    );
    a.push(
        Some(&ja),
        Some("6"),
        "realtime:test",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {}}),
    )
    .await;
    assert_eq!(a.recv().await.payload()["status"], "ok");
}

#[tokio::test]
async fn generated_key_when_none_given() {
    let s = Server::start().await;
    let mut a = s.connect("2.0.0").await;
    let ja = a.join("realtime:k", config(json!({}))).await;
    a.push(
        Some(&ja),
        Some("2"),
        "realtime:k",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"a": 1}}),
    )
    .await;
    let d = a.recv_event("presence_diff").await;
    let joins = d.payload()["joins"].as_object().unwrap();
    assert_eq!(joins.len(), 1);
    let key = joins.keys().next().unwrap();
    assert_eq!(key.len(), 36, "a UUID key: {key}");
}

#[tokio::test]
async fn closed_socket_and_dead_peer_leave() {
    let s = Server::start_with(&[("PING_INTERVAL_MS", "200")]).await;
    let mut watcher = s.connect("2.0.0").await;
    let jw = watcher
        .join(
            "realtime:room",
            config(json!({"presence": {"key": "w", "enabled": true}})),
        )
        .await;
    let _ = jw;

    // A socket that closes.
    let mut closer = s.connect("2.0.0").await;
    let jc = closer
        .join("realtime:room", config(json!({"presence": {"key": "closer"}})))
        .await;
    closer
        .push(
            Some(&jc),
            Some("2"),
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {}}),
        )
        .await;
    watcher.recv_event("presence_diff").await;
    drop(closer);
    let d = watcher.recv_event("presence_diff").await;
    assert!(d.payload()["leaves"]["closer"].is_object());

    // A peer that goes silent without closing TCP: we stop reading its socket, so it
    // never answers pings; the server drops it after two ping intervals.
    let mut silent = s.connect("2.0.0").await;
    let js = silent
        .join("realtime:room", config(json!({"presence": {"key": "silent"}})))
        .await;
    silent
        .push(
            Some(&js),
            Some("2"),
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {}}),
        )
        .await;
    watcher.recv_event("presence_diff").await;
    let started = std::time::Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(5), watcher.recv_event("presence_diff"))
        .await
        .expect("dead peer leaves");
    assert!(d.payload()["leaves"]["silent"].is_object());
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}
