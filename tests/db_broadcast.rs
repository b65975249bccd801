//! Broadcast from Database against a real PostgreSQL 15 and the real binary: rows that
//! `realtime.send` / `send_binary` insert reach V2 members as type 4 and V1 members as JSON
//! with `meta.id`, public/private topics stay apart, binary rows skip V1, and messages
//! survive restarts of the server and of Postgres without duplicates.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use realtime_wal::stream::{ReplicationOptions, ReplicationStream};
use serde_json::{json, Value};

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";
const SLOT: &str = "realtime_rs_messages";

async fn setup() -> (Pg, Server) {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    wait_streaming(&pg).await;
    (pg, s)
}

/// Waits until the server streams the messages slot (a message inserted before the slot
/// exists is not in it).
async fn wait_streaming(pg: &Pg) {
    let c = pg.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active: Option<bool> = c
            .query_opt("select active from pg_replication_slots where slot_name = $1", &[&SLOT])
            .await
            .unwrap()
            .map(|r| r.get(0));
        if active == Some(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "messages slot never streamed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_slot_idle(pg: &Pg) {
    let c = pg.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active: Option<bool> = c
            .query_opt("select active from pg_replication_slots where slot_name = $1", &[&SLOT])
            .await
            .unwrap()
            .map(|r| r.get(0));
        if active == Some(false) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "messages slot still in use");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A decoded type-4 frame.
#[derive(Debug)]
struct UserBroadcast {
    topic: String,
    event: String,
    meta: Value,
    encoding: u8,
    payload: Vec<u8>,
}

fn type4(bytes: &[u8]) -> UserBroadcast {
    assert_eq!(bytes[0], 4, "type 4 expected: {bytes:?}");
    let (t, e, m) = (bytes[1] as usize, bytes[2] as usize, bytes[3] as usize);
    let mut at = 5;
    let mut take = |n: usize| {
        let s = &bytes[at..at + n];
        at += n;
        s.to_vec()
    };
    let topic = String::from_utf8(take(t)).unwrap();
    let event = String::from_utf8(take(e)).unwrap();
    let meta = serde_json::from_slice(&take(m)).unwrap();
    UserBroadcast {
        topic,
        event,
        meta,
        encoding: bytes[4],
        payload: bytes[5 + t + e + m..].to_vec(),
    }
}

async fn recv_binary(c: &mut Client) -> UserBroadcast {
    match tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap() {
        Frame::Binary(b) => type4(&b),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// Next V1 broadcast: the raw frame as JSON.
async fn recv_v1(c: &mut Client) -> Value {
    match tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap() {
        Frame::Text(_, raw) => serde_json::from_str(&raw).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_v2_and_v1_members_with_their_encodings() {
    let (pg, s) = setup().await;
    let mut v2 = s.connect("2.0.0").await;
    let mut v1 = s.connect("1.0.0").await;
    v2.join("realtime:room", config(json!({}))).await;
    v1.join("realtime:room", config(json!({}))).await;

    pg.exec(r#"select realtime.send('{"v": 1}', 'ev', 'room', false)"#)
        .await;
    let m = recv_binary(&mut v2).await;
    assert_eq!(
        (m.topic.as_str(), m.event.as_str(), m.encoding),
        ("realtime:room", "ev", 1)
    );
    let id = m.meta["id"].as_str().unwrap().to_owned();
    assert_eq!(m.meta, json!({"id": id}));
    assert_eq!(id.len(), 36, "a uuid: {id}");
    let payload: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(payload, json!({"v": 1, "id": id}));

    let f = recv_v1(&mut v1).await;
    assert_eq!(
        f,
        json!({"event": "broadcast", "ref": null, "topic": "realtime:room",
               "payload": {"event": "ev", "meta": {"id": id}, "payload": {"v": 1, "id": id}, "type": "broadcast"}})
    );

    // The row id is the metadata id.
    let c = pg.client().await;
    let stored: String = c
        .query_one("select id::text from realtime.messages where event = 'ev'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rows_skip_public_members_and_binary_rows_skip_v1() {
    let (pg, s) = setup().await;
    let mut v2 = s.connect("2.0.0").await;
    let mut v1 = s.connect("1.0.0").await;
    let mut other = s.connect("2.0.0").await;
    v2.join("realtime:room", config(json!({}))).await;
    v1.join("realtime:room", config(json!({}))).await;
    other.join("realtime:elsewhere", config(json!({}))).await;

    // One transaction, in order: private (default), presence row, binary, then a marker.
    pg.exec(
        r#"begin;
           select realtime.send('{"secret": true}', 'hidden', 'room');
           insert into realtime.messages (topic, extension, payload, private) values ('room', 'presence', '{}', false);
           select realtime.send_binary('\x0102ff'::bytea, 'bin', 'room', false);
           select realtime.send('{"n": "marker"}', 'marker', 'room', false);
           commit;"#,
    )
    .await;
    let bin = recv_binary(&mut v2).await;
    assert_eq!((bin.event.as_str(), bin.encoding), ("bin", 0));
    assert_eq!(bin.payload, vec![1, 2, 255]);
    assert!(bin.meta["id"].is_string());
    let marker = recv_binary(&mut v2).await;
    assert_eq!(marker.event, "marker");

    let f = recv_v1(&mut v1).await;
    assert_eq!(
        f["payload"]["event"], "marker",
        "V1 gets neither the private nor the binary row: {f}"
    );
    assert_eq!(f["payload"]["payload"]["n"], "marker");

    v2.expect_silence(Duration::from_millis(300)).await;
    v1.expect_silence(Duration::from_millis(100)).await;
    other.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_in_order() {
    let (pg, s) = setup().await;
    let mut v2 = s.connect("2.0.0").await;
    v2.join("realtime:bulk", config(json!({}))).await;
    pg.exec("select realtime.send(jsonb_build_object('n', g), 'ev', 'bulk', false) from generate_series(1, 500) g")
        .await;
    for n in 1..=500 {
        let m = recv_binary(&mut v2).await;
        let p: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(p["n"], n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_server_is_down_arrives_after_restart() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let url = pg.url();
    let env = [("DATABASE_URL", url.as_str())];
    let mut s = Server::start_with(&env).await;
    wait_streaming(&pg).await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:r", config(json!({}))).await;
    pg.exec(r#"select realtime.send('{"n": 1}', 'ev', 'r', false)"#).await;
    let m = recv_binary(&mut c).await;
    assert_eq!(serde_json::from_slice::<Value>(&m.payload).unwrap()["n"], 1);
    // Let the acknowledgement go out before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    drop(c);
    wait_slot_idle(&pg).await;
    pg.exec(
        r#"select realtime.send('{"n": 2}', 'ev', 'r', false); select realtime.send('{"n": 3}', 'ev', 'r', false)"#,
    )
    .await;

    // Hold the slot so the restarted server cannot stream before our client has joined
    // (what arrives with nobody subscribed is not kept for later).
    let db: tokio_postgres::Config = url.parse().unwrap();
    let opts = ReplicationOptions {
        slot: SLOT.into(),
        publication: "supabase_realtime_messages_publication".into(),
        temporary_slot: false,
        application_name: "test-holder".into(),
    };
    let holder = ReplicationStream::connect(&db, &opts).await.unwrap();
    let s2 = Server::start_with(&env).await;
    let mut c = s2.connect("2.0.0").await;
    c.join("realtime:r", config(json!({}))).await;
    // Never acknowledged anything: closing leaves the slot where the first server left it.
    holder.close().await.unwrap();
    wait_streaming(&pg).await;
    pg.exec(r#"select realtime.send('{"n": 4}', 'ev', 'r', false)"#).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = recv_binary(&mut c).await;
        seen.push(
            serde_json::from_slice::<Value>(&m.payload).unwrap()["n"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![2, 3, 4],
        "sent while down arrives once, in order; 1 is not repeated"
    );
    c.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_recovers_without_duplicates() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:p", config(json!({}))).await;
    pg.exec(r#"select realtime.send('{"n": 1}', 'ev', 'p', false)"#).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&recv_binary(&mut c).await.payload).unwrap()["n"],
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop();
    pg.start_again();
    wait_streaming(&pg).await;
    pg.exec(r#"select realtime.send('{"n": 2}', 'ev', 'p', false)"#).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&recv_binary(&mut c).await.payload).unwrap()["n"],
        2,
        "1 is not delivered again after Postgres restarts"
    );
    c.expect_silence(Duration::from_millis(500)).await;
}

/// Throughput of `realtime.send` to 100 public V2 subscribers (ignored by default; run with
/// `cargo test --release --test db_broadcast -- --ignored --nocapture throughput`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput() {
    throughput_to(false).await;
}

/// Issue 4's figure: `realtime.send` in a loop to 100 private subscribers.
/// `cargo test --release --test db_broadcast -- --ignored --nocapture throughput_private`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput_private() {
    throughput_to(true).await;
}

async fn throughput_to(private: bool) {
    const SUBSCRIBERS: usize = 100;
    const MESSAGES: usize = 10_000;
    let (pg, s) = setup().await;
    pg.exec(
        "create policy bench_read on realtime.messages for select to authenticated using ((select realtime.topic()) = 'load');",
    )
    .await;
    let user = claims_token(
        json!({"role": "authenticated", "sub": "11111111-1111-1111-1111-111111111111", "exp": now() + 3600}),
    );
    let mut tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut c = s.connect("2.0.0").await;
        let mut conf = config(json!({}));
        conf["private"] = json!(private);
        let (_, reply) = c.join_with("realtime:load", conf, Some(&user)).await;
        assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
        tasks.push(tokio::spawn(async move {
            for _ in 0..MESSAGES {
                match tokio::time::timeout(Duration::from_secs(60), c.recv()).await.unwrap() {
                    Frame::Binary(_) => {}
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    let start = std::time::Instant::now();
    // One statement per message, each its own transaction, from 4 connections.
    let per = MESSAGES / 4;
    let mut senders = Vec::new();
    for _ in 0..4 {
        let c = pg.client().await;
        senders.push(tokio::spawn(async move {
            let stmt = c
                .prepare("select realtime.send(jsonb_build_object('n', $1::int), 'ev', 'load', $2)")
                .await
                .unwrap();
            for n in 0..per {
                c.execute(&stmt, &[&(n as i32), &private]).await.unwrap();
            }
        }));
    }
    for t in senders {
        t.await.unwrap();
    }
    let sent = start.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    let all = start.elapsed();
    eprintln!(
        "{MESSAGES} realtime.send transactions to {SUBSCRIBERS} {} subscribers: inserts {:.0}/s, delivered to all {:.0} msg/s ({:.0} frames/s)",
        if private { "private" } else { "public" },
        MESSAGES as f64 / sent.as_secs_f64(),
        MESSAGES as f64 / all.as_secs_f64(),
        (MESSAGES * SUBSCRIBERS) as f64 / all.as_secs_f64()
    );
}
