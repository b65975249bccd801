//! `persist` (issue 14 §1): client broadcasts stored in `realtime.messages` for replay on
//! private channels, against a real PostgreSQL 15 and the real binary. Raw clients cover
//! what supabase-js cannot send: the protocol-1.0.0 payload field, bad values, and the
//! server-side refusals; `tests/js/test/persist.test.mjs` covers supabase-js itself.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";

/// `room-1`: members read and write; `ro-room`: read only.
const POLICIES: &str = r#"
create policy "read rooms" on realtime.messages for select to authenticated
  using ((select realtime.topic()) in ('room-1', 'ro-room') and extension in ('broadcast', 'presence'));
create policy "write room-1" on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'room-1');
"#;

const SLOT: &str = "realtime_rs_messages";

fn user() -> String {
    claims_token(json!({"role": "authenticated", "sub": "11111111-1111-1111-1111-111111111111", "exp": now() + 3600}))
}

fn private(over: Value) -> Value {
    let mut c = config(over);
    c["private"] = json!(true);
    c
}

async fn setup(extra_env: &[(&str, &str)]) -> (Pg, Server) {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let url = pg.url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra_env);
    let server = Server::start_with(&env).await;
    pg.exec(POLICIES).await;
    wait_streaming(&pg).await;
    (pg, server)
}

/// Waits until Broadcast from Database streams: only then would it deliver a stored row a
/// second time, so "delivered once" means something.
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

/// A V2 type-3 push with `metadata`.
fn push_with_metadata(join_ref: &str, ref_: &str, topic: &str, event: &str, metadata: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![
        3,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        metadata.len() as u8,
        1,
    ];
    for s in [join_ref, ref_, topic, event, metadata] {
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(payload);
    b
}

/// A type-4 frame: (event, meta, payload).
fn type4(bytes: &[u8]) -> (String, Value, Vec<u8>) {
    assert_eq!(bytes[0], 4, "type 4 expected: {bytes:?}");
    let (t, e, m) = (bytes[1] as usize, bytes[2] as usize, bytes[3] as usize);
    let event = String::from_utf8(bytes[5 + t..5 + t + e].to_vec()).unwrap();
    let meta = serde_json::from_slice(&bytes[5 + t + e..5 + t + e + m]).unwrap();
    (event, meta, bytes[5 + t + e + m..].to_vec())
}

/// The next broadcast a client gets, as (event, meta, payload JSON), text or type 4.
async fn next_broadcast(c: &mut Client) -> (String, Value, Value) {
    match c.recv().await {
        Frame::Binary(b) => {
            let (event, meta, payload) = type4(&b);
            (event, meta, serde_json::from_slice(&payload).unwrap())
        }
        f @ Frame::Text(..) => {
            assert_eq!(f.event(), "broadcast", "{f:?}");
            let p = f.payload();
            (
                p["event"].as_str().unwrap().to_owned(),
                p["meta"].clone(),
                p["payload"].clone(),
            )
        }
        other => panic!("expected a broadcast, got {other:?}"),
    }
}

async fn rows(pg: &Pg, topic: &str) -> Vec<(String, String, Option<String>, bool, Option<f64>)> {
    pg.client()
        .await
        .query(
            "select id::text, event, payload::text, rs_delivered_live, \
                    extract(epoch from rs_expires_at - inserted_at)::float8 \
             from realtime.messages where topic = $1 order by inserted_at",
            &[&topic],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// A Broadcast from Database message on the private `room-1`: once a member has it, any
/// earlier stored row the stream would deliver has arrived too (the stream is in commit
/// order).
async fn sentinel(pg: &Pg) {
    pg.exec("select realtime.send('{\"s\":1}', 'sentinel', 'room-1', true)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsn1_payload_field_is_stored_delivered_once_and_replayed() {
    let (pg, s) = setup(&[]).await;
    let mut member = s.connect("2.0.0").await;
    let (_, r) = member
        .join_with("realtime:room-1", private(json!({})), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");

    let mut sender = s.connect("1.0.0").await;
    let cfg = private(json!({"broadcast": {"ack": true, "self": false}}));
    let (j, r) = sender.join_with("realtime:room-1", cfg, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    sender
        .push(
            Some(&j),
            Some("50"),
            "realtime:room-1",
            "broadcast",
            json!({"type": "broadcast", "event": "chat", "payload": {"m": 1}, "persist": true}),
        )
        .await;
    let reply = sender.recv_event("phx_reply").await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let id = reply.payload()["response"]["id"].as_str().unwrap().to_owned();

    // Live, once, with the stored row's id; the persist member is not relayed.
    let f = member.recv().await;
    assert_eq!(
        f.payload(),
        &json!({"type": "broadcast", "event": "chat", "payload": {"m": 1}, "meta": {"id": id}})
    );
    sentinel(&pg).await;
    let (event, _, _) = next_broadcast(&mut member).await;
    assert_eq!(event, "sentinel", "the stored row must not be streamed a second time");

    // Stored with the default lifetime (MESSAGES_RETENTION_HOURS = 72).
    let stored = rows(&pg, "room-1").await;
    assert_eq!(stored[0].0, id);
    assert_eq!(
        (stored[0].1.as_str(), stored[0].2.as_deref(), stored[0].3),
        ("chat", Some(r#"{"m": 1}"#), true)
    );
    let ttl = stored[0].4.unwrap();
    assert!((ttl - 72.0 * 3600.0).abs() < 5.0, "{ttl}");

    // A later join asking for replay gets it, marked replayed, and not again live.
    let mut later = s.connect("1.0.0").await;
    let replay = private(json!({"broadcast": {"replay": {"since": 0}}}));
    let (_, r) = later.join_with("realtime:room-1", replay, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let f = later.recv().await;
    assert_eq!(f.payload()["event"], "chat");
    assert_eq!(f.payload()["payload"], json!({"m": 1}));
    assert_eq!(f.payload()["meta"], json!({"id": id, "replayed": true}));
    let f = later.recv().await;
    assert_eq!(f.payload()["event"], "sentinel", "{f:?}");
    later.expect_silence(Duration::from_millis(300)).await;
    member.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_push_metadata_with_ttl_expires_from_replay() {
    let (pg, s) = setup(&[]).await;
    let mut member = s.connect("1.0.0").await;
    let (_, r) = member
        .join_with("realtime:room-1", private(json!({})), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let mut sender = s.connect("2.0.0").await;
    let (j, r) = sender
        .join_with("realtime:room-1", private(json!({})), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    // Without ack: no reply, still stored.
    let short = push_with_metadata(
        &j,
        "8",
        "realtime:room-1",
        "short",
        r#"{"persist":{"ttl":1}}"#,
        br#"{"n":1}"#,
    );
    sender.send_binary(short).await;
    let long = push_with_metadata(&j, "9", "realtime:room-1", "long", r#"{"persist":{}}"#, br#"{"n":2}"#);
    sender.send_binary(long).await;

    let (event, meta, payload) = next_broadcast(&mut member).await;
    assert_eq!((event.as_str(), &payload), ("short", &json!({"n": 1})));
    let short_id = meta["id"].as_str().unwrap().to_owned();
    let (event, meta, _) = next_broadcast(&mut member).await;
    assert_eq!(event, "long");
    let long_id = meta["id"].as_str().unwrap().to_owned();
    sender.expect_silence(Duration::from_millis(200)).await;

    let stored = rows(&pg, "room-1").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!((stored[0].0.as_str(), stored[0].4), (short_id.as_str(), Some(1.0)));
    assert_eq!(stored[1].0, long_id);

    // Past its ttl the short one is no longer replayed (retention runs hourly here: the
    // row is still in the table).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut later = s.connect("2.0.0").await;
    let replay = private(json!({"broadcast": {"replay": {"since": 0}}}));
    let (_, r) = later.join_with("realtime:room-1", replay, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let f = later.recv().await;
    assert_eq!(f.payload()["event"], "long");
    assert_eq!(f.payload()["meta"], json!({"id": long_id, "replayed": true}));
    later.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(rows(&pg, "room-1").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_store_nothing_and_deliver_nothing() {
    let (pg, s) = setup(&[]).await;
    let ack = json!({"broadcast": {"ack": true, "self": true}});
    let mut c = s.connect("1.0.0").await;

    // Public channel: error reply, nothing delivered (self is on), nothing stored.
    let pj = c.join("realtime:room-1", config(ack.clone())).await;
    c.push(
        Some(&pj),
        Some("20"),
        "realtime:room-1",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}, "persist": true}),
    )
    .await;
    let r = c.recv_event("phx_reply").await;
    assert_eq!(r.payload()["status"], "error");
    assert_eq!(
        r.payload()["response"],
        json!({"error": "UnableToStoreMessage: Only broadcasts on private channels can be stored"})
    );

    // Private channel, bad ttl: error reply with the reason.
    let (j, r) = c
        .join_with("realtime:room-1", private(ack.clone()), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    for (i, bad) in [json!({"ttl": 0}), json!({"ttl": "soon"}), json!("yes")]
        .into_iter()
        .enumerate()
    {
        let ref_ = format!("3{i}");
        c.push(
            Some(&j),
            Some(&ref_),
            "realtime:room-1",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {}, "persist": bad}),
        )
        .await;
        let r = c.recv_event("phx_reply").await;
        assert_eq!(r.payload()["status"], "error", "{bad}");
        let why = r.payload()["response"]["error"].as_str().unwrap();
        assert!(why.starts_with("persist"), "{why}");
    }
    // A payload jsonb cannot hold: the store fails, the client is told, nothing delivered.
    c.send_text(&format!(
        r#"{{"topic":"realtime:room-1","event":"broadcast","ref":"40","join_ref":"{j}","payload":{{"type":"broadcast","event":"e","payload":{{"a":"\u0000"}},"persist":true}}}}"#
    ))
    .await;
    let r = c.recv_event("phx_reply").await;
    assert_eq!(
        r.payload()["response"],
        json!({"error": "UnableToStoreMessage: Realtime was unable to store the message"})
    );
    // persist: false is an ordinary broadcast (self is on: it comes back, without an id).
    c.push(
        Some(&j),
        Some("41"),
        "realtime:room-1",
        "broadcast",
        json!({"type": "broadcast", "event": "plain", "payload": {}, "persist": false}),
    )
    .await;
    let f = c.recv().await;
    assert_eq!(
        f.payload()["event"],
        "plain",
        "refused broadcasts must not be delivered: {f:?}"
    );
    assert!(f.payload().get("meta").is_none());
    assert_eq!(c.recv_event("phx_reply").await.payload()["response"], json!({}));

    // REST: persist without private=true, and bad ttl values, are 422s.
    let auth = format!("Bearer {}", user());
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for (query, want) in [
        (
            "persist=true",
            "UnableToStoreMessage: Only broadcasts on private channels can be stored",
        ),
        (
            "persist%5Bttl%5D=60",
            "UnableToStoreMessage: Only broadcasts on private channels can be stored",
        ),
        (
            "private=true&persist%5Bttl%5D=0",
            "persist ttl must be a positive integer number of seconds",
        ),
        (
            "private=true&persist=maybe",
            "persist must be true or {\"ttl\": <seconds>}",
        ),
    ] {
        let path = format!("/api/broadcast/room-1/events/e?{query}");
        let (status, _, body) = s.http("POST", &path, &h, b"{}").await;
        assert_eq!(status, 422, "{query}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"message": want}), "{query}");
    }
    // Read-only room: the write check still applies (403, nothing stored).
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/ro-room/events/e?private=true&persist=true",
            &h,
            b"{}",
        )
        .await;
    assert_eq!(status, 403);

    c.expect_silence(Duration::from_millis(300)).await;
    let n: i64 = pg
        .client()
        .await
        .query_one("select count(*) from realtime.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "refused broadcasts must not be stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_persist_is_stored_replayed_and_delivered_once() {
    let (pg, s) = setup(&[]).await;
    let mut member = s.connect("2.0.0").await;
    let (_, r) = member
        .join_with("realtime:room-1", private(json!({})), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let auth = format!("Bearer {}", user());
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/room-1/events/rest?private=true&persist%5Bttl%5D=600",
            &h,
            br#"{"r":1}"#,
        )
        .await;
    assert_eq!(status, 202);
    let (event, meta, payload) = next_broadcast(&mut member).await;
    assert_eq!((event.as_str(), &payload), ("rest", &json!({"r": 1})));
    let id = meta["id"].as_str().unwrap().to_owned();
    sentinel(&pg).await;
    assert_eq!(next_broadcast(&mut member).await.0, "sentinel");

    let stored = rows(&pg, "room-1").await;
    assert_eq!(
        (stored[0].0.as_str(), stored[0].3, stored[0].4),
        (id.as_str(), true, Some(600.0))
    );

    let mut later = s.connect("2.0.0").await;
    let replay = private(json!({"broadcast": {"replay": {"since": 0, "limit": 1}}}));
    let (_, r) = later.join_with("realtime:room-1", replay, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let f = later.recv().await;
    assert_eq!(f.payload()["event"], "sentinel", "limit 1: the newest only");
    let replay = private(json!({"broadcast": {"replay": {"since": 0}}}));
    let mut again = s.connect("2.0.0").await;
    let (_, r) = again.join_with("realtime:room-1", replay, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let f = again.recv().await;
    assert_eq!(f.payload()["meta"], json!({"id": id, "replayed": true}));
    assert_eq!(f.payload()["payload"], json!({"r": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_rows_even_when_keeping_everything() {
    let (pg, s) = setup(&[
        ("MESSAGES_RETENTION_HOURS", "0"),
        ("MESSAGES_RETENTION_INTERVAL_SECS", "1"),
    ])
    .await;
    let auth = format!("Bearer {}", user());
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for query in ["private=true&persist%5Bttl%5D=1", "private=true&persist=true"] {
        let path = format!("/api/broadcast/room-1/events/e?{query}");
        assert_eq!(s.http("POST", &path, &h, b"{}").await.0, 202, "{query}");
    }
    let stored = rows(&pg, "room-1").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].4, None, "retention 0 and no ttl: kept until deleted by hand");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = rows(&pg, "room-1").await;
        if left.len() == 1 {
            assert_eq!(left[0].0, stored[1].0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired row not deleted: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_persist_is_refused() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let j = c
        .join(
            "realtime:room",
            config(json!({"broadcast": {"ack": true, "self": true}})),
        )
        .await;
    c.send_binary(push_with_metadata(
        &j,
        "5",
        "realtime:room",
        "e",
        r#"{"persist":true}"#,
        b"{}",
    ))
    .await;
    let r = c.recv_event("phx_reply").await;
    assert_eq!(
        r.payload()["response"],
        json!({"error": "UnableToStoreMessage: Only broadcasts on private channels can be stored"})
    );
    c.expect_silence(Duration::from_millis(300)).await;
    let key = token("anon", 3600);
    let h = [("apikey", key.as_str()), ("content-type", "application/json")];
    let (status, _, body) = s
        .http(
            "POST",
            "/api/broadcast/room/events/e?private=true&persist=true",
            &h,
            b"{}",
        )
        .await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"message": "UnableToStoreMessage: This server has no database to store messages in"})
    );
}
