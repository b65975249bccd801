//! `REPLAY_PUBLIC=true`: public broadcasts get ids, are kept, and are replayed to joins
//! with `config.broadcast.replay`, in memory and (with a database) across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

fn replay(since: i64, limit: i64) -> Value {
    config(json!({"broadcast": {"ack": false, "self": false, "replay": {"since": since, "limit": limit}}}))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A type-4 frame's (event, metadata JSON, payload bytes).
fn user_broadcast(b: &[u8]) -> (String, Value, Vec<u8>) {
    assert_eq!(b[0], 4, "type 4 expected: {b:?}");
    let (t, e, m) = (b[1] as usize, b[2] as usize, b[3] as usize);
    let event = String::from_utf8(b[5 + t..5 + t + e].to_vec()).unwrap();
    let meta = serde_json::from_slice(&b[5 + t + e..5 + t + e + m]).unwrap();
    (event, meta, b[5 + t + e + m..].to_vec())
}

async fn send(c: &mut Client, join_ref: &str, topic: &str, n: i64) {
    let r = c.make_ref();
    c.push(
        Some(join_ref),
        Some(&r),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": "ev", "payload": {"n": n}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_history_in_memory() {
    let s = Server::start_with(&[("REPLAY_PUBLIC", "true")]).await;
    let topic = "realtime:wedding-timeline";
    let mut sender = s.connect("2.0.0").await;
    let sj = sender.join(topic, config(json!({}))).await;
    let mut live = s.connect("1.0.0").await;
    live.join(topic, config(json!({}))).await;

    let before = now_ms();
    for n in 1..=3 {
        send(&mut sender, &sj, topic, n).await;
    }
    // Live copies carry their id.
    let mut live_ids = Vec::new();
    for n in 1..=3 {
        let f = live.recv_event("broadcast").await;
        assert_eq!(f.payload()["payload"]["n"], n, "{f:?}");
        let id = f.payload()["meta"]["id"]
            .as_str()
            .expect("meta.id on a live public broadcast");
        assert!(f.payload()["meta"].get("replayed").is_none());
        live_ids.push(id.to_owned());
    }
    // REST single (a user broadcast) is kept too.
    let anon = token("anon", 3600);
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/wedding-timeline/events/rest-ev",
            &[("apikey", &anon), ("content-type", "application/json")],
            br#"{"n":4}"#,
        )
        .await;
    assert_eq!(status, 202);

    let f = live.recv_event("broadcast").await;
    assert_eq!(f.payload()["event"], "rest-ev", "{f:?}");
    live_ids.push(f.payload()["meta"]["id"].as_str().unwrap().to_owned());

    // A client that reconnects gets the newest 3 since `since`, oldest first, same ids.
    let mut back = s.connect("2.0.0").await;
    let (j, r) = back.join_with(topic, replay(before, 3), None).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    for (n, id) in [(2, &live_ids[1]), (3, &live_ids[2])] {
        let f = back.recv().await;
        assert_eq!(f.json()[0], json!(j), "replayed JSON is a channel push");
        assert_eq!(f.payload()["payload"]["n"], n);
        assert_eq!(f.payload()["meta"], json!({"id": id, "replayed": true}));
    }
    // Stored JSON replays as a channel push (as Supabase replays realtime.messages rows).
    let f = back.recv().await;
    assert_eq!(f.payload()["event"], "rest-ev");
    assert_eq!(f.payload()["payload"], json!({"n": 4}));
    assert_eq!(f.payload()["meta"], json!({"id": live_ids[3], "replayed": true}));

    // Then live messages, each once.
    send(&mut sender, &sj, topic, 5).await;
    let f = back.recv().await;
    assert_eq!(f.payload()["payload"]["n"], 5, "{f:?}");
    assert!(f.payload()["meta"]["id"].is_string());
    back.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_filters_and_off_by_default() {
    let s = Server::start_with(&[("REPLAY_PUBLIC", "true")]).await;
    let topic = "realtime:since";
    let mut sender = s.connect("2.0.0").await;
    let sj = sender.join(topic, config(json!({}))).await;
    send(&mut sender, &sj, topic, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_first = now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&mut sender, &sj, topic, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut c = s.connect("2.0.0").await;
    let (_, r) = c.join_with(topic, replay(after_first, 25), None).await;
    assert_eq!(r.payload()["status"], "ok");
    let f = c.recv().await;
    assert_eq!(f.payload()["payload"]["n"], 2);
    c.expect_silence(Duration::from_millis(300)).await;

    // Without the setting, public replay is refused as Supabase does.
    let plain = Server::start().await;
    let mut c = plain.connect("2.0.0").await;
    let (_, r) = c.join_with(topic, replay(0, 25), None).await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_history_survives_a_restart() {
    let pg = Pg::start();
    let url = pg.url();
    let env = [("DATABASE_URL", url.as_str()), ("REPLAY_PUBLIC", "true")];
    let mut s = Server::start_with(&env).await;
    let topic = "realtime:durable";
    let mut sender = s.connect("2.0.0").await;
    let sj = sender.join(topic, config(json!({}))).await;
    for n in 1..=2 {
        send(&mut sender, &sj, topic, n).await;
    }
    // Binary payloads are kept as bytes.
    let r = sender.make_ref();
    sender
        .send_binary(user_broadcast_push(&sj, &r, topic, "bin", false, &[0, 1, 255]))
        .await;
    let c = pg.client().await;
    let mut stored = 0;
    for _ in 0..100 {
        stored = c
            .query_one("select count(*) from realtime.rs_public_broadcasts", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if stored == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, 3, "the writer stores every public broadcast");
    drop(sender);
    s.kill();

    let s = Server::start_with(&env).await;
    let mut back = s.connect("2.0.0").await;
    let (_, r) = back.join_with(topic, replay(0, 25), None).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    for n in 1..=2 {
        let f = back.recv().await;
        assert_eq!(f.payload()["payload"]["n"], n);
        assert_eq!(f.payload()["meta"]["replayed"], true);
    }
    let Frame::Binary(b) = back.recv().await else {
        panic!("binary replay")
    };
    let (event, meta, body) = user_broadcast(&b);
    assert_eq!((event.as_str(), body.as_slice()), ("bin", &[0u8, 1, 255][..]));
    assert_eq!(meta["replayed"], true);
    back.expect_silence(Duration::from_millis(300)).await;
}
