//! Private channels authorized by RLS policies on `realtime.messages` (protocol.md §9),
//! against a real PostgreSQL 15 and the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::json;

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";

/// Members of `room-1` may read and write (broadcast and presence); `ro-room` is
/// read-only; nobody may read anything else. `anon` has no policy at all.
const POLICIES: &str = r#"
create policy "read rooms" on realtime.messages for select to authenticated
  using ((select realtime.topic()) in ('room-1', 'ro-room') and extension in ('broadcast', 'presence'));
create policy "write room-1" on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'room-1');
"#;

fn user() -> String {
    claims_token(json!({"role": "authenticated", "sub": "11111111-1111-1111-1111-111111111111", "exp": now() + 3600}))
}

async fn setup(extra_env: &[(&str, &str)]) -> (Pg, Server) {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let url = pg.url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra_env);
    let server = Server::start_with(&env).await;
    // Migrations run before the server listens.
    pg.exec(POLICIES).await;
    (pg, server)
}

fn private(over: serde_json::Value) -> serde_json::Value {
    let mut c = config(over);
    c["private"] = json!(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_is_decided_by_read_policies() {
    let (_pg, s) = setup(&[]).await;
    let mut c = s.connect("2.0.0").await;
    let (_, r) = c.join_with("realtime:room-1", private(json!({})), Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    let (_, r) = c.join_with("realtime:room-2", private(json!({})), Some(&user())).await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: room-2"
    );
    // anon: no policy.
    let (_, r) = c.join_with("realtime:room-1", private(json!({})), None).await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: room-1"
    );
    // A public channel of the same name is another topic, open to all.
    let (_, r) = c.join_with("realtime:room-2", config(json!({})), None).await;
    assert_eq!(r.payload()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_write_policies_and_topics_stay_apart() {
    let (_pg, s) = setup(&[]).await;
    let mut b = s.connect("1.0.0").await;
    let mut public = s.connect("2.0.0").await;
    let (_, r) = b.join_with("realtime:room-1", private(json!({})), Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok");
    public.join("realtime:room-1", config(json!({}))).await;

    let mut w = s.connect("2.0.0").await;
    let (jw, r) = w
        .join_with(
            "realtime:room-1",
            private(json!({"broadcast": {"ack": true}})),
            Some(&user()),
        )
        .await;
    assert_eq!(r.payload()["status"], "ok");
    w.send_binary(user_broadcast_push(
        &jw,
        "5",
        "realtime:room-1",
        "e",
        true,
        br#"{"n":1}"#,
    ))
    .await;
    assert_eq!(
        w.recv().await.payload()["status"],
        "ok",
        "ack after an authorized broadcast"
    );
    assert_eq!(b.recv_event("broadcast").await.payload()["payload"], json!({"n": 1}));
    public.expect_silence(Duration::from_millis(300)).await;

    // Read-only room: the broadcast is dropped silently, even with ack.
    let (jr, r) = w
        .join_with(
            "realtime:ro-room",
            private(json!({"broadcast": {"ack": true}})),
            Some(&user()),
        )
        .await;
    assert_eq!(r.payload()["status"], "ok");
    let mut reader = s.connect("2.0.0").await;
    let (_, r) = reader
        .join_with("realtime:ro-room", private(json!({})), Some(&user()))
        .await;
    assert_eq!(r.payload()["status"], "ok");
    w.send_binary(user_broadcast_push(&jr, "6", "realtime:ro-room", "e", true, b"{}"))
        .await;
    w.expect_silence(Duration::from_millis(400)).await;
    reader.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_read_and_write_policies() {
    let (_pg, s) = setup(&[]).await;
    let mut c = s.connect("2.0.0").await;
    let (j, r) = c
        .join_with(
            "realtime:room-1",
            private(json!({"presence": {"key": "u1", "enabled": true}})),
            Some(&user()),
        )
        .await;
    assert_eq!(r.payload()["status"], "ok");
    assert_eq!(c.recv_event("presence_state").await.payload(), &json!({}));
    c.push(
        Some(&j),
        Some("3"),
        "realtime:room-1",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"a": 1}}),
    )
    .await;
    assert_eq!(c.recv_event("phx_reply").await.payload()["status"], "ok");
    assert!(c.recv_event("presence_diff").await.payload()["joins"]["u1"].is_object());

    let (j, r) = c
        .join_with(
            "realtime:ro-room",
            private(json!({"presence": {"key": "u1", "enabled": true}})),
            Some(&user()),
        )
        .await;
    assert_eq!(r.payload()["status"], "ok");
    c.recv_event("presence_state").await;
    c.push(
        Some(&j),
        Some("4"),
        "realtime:ro-room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"a": 1}}),
    )
    .await;
    let reply = c.recv_event("phx_reply").await;
    assert_eq!(reply.payload(), &json!({"response": {}, "status": "error"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_that_revokes_read_closes_the_channel() {
    let (_pg, s) = setup(&[]).await;
    let mut c = s.connect("2.0.0").await;
    let (j, r) = c.join_with("realtime:room-1", private(json!({})), Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok");
    c.push(
        Some(&j),
        Some("5"),
        "realtime:room-1",
        "access_token",
        json!({"access_token": token("anon", 600)}),
    )
    .await;
    let sys = c.recv_event("system").await;
    assert_eq!(
        sys.payload(),
        &json!({"channel": "room-1", "extension": "system", "message": "You do not have permissions to read from this Channel topic: room-1", "status": "error"})
    );
    assert_eq!(
        c.recv().await.json(),
        &json!([j, j, "realtime:room-1", "phx_close", {}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_private_sends_use_the_write_check() {
    let (_pg, s) = setup(&[]).await;
    let mut c = s.connect("2.0.0").await;
    let (_, r) = c.join_with("realtime:room-1", private(json!({})), Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok");
    let anon = format!("Bearer {}", token("anon", 60));
    let authed = format!("Bearer {}", user());
    let json_type = ("Content-Type", "application/json");

    let (status, _, body) = s
        .http(
            "POST",
            "/api/broadcast/room-1/events/e?private=true",
            &[("Authorization", &anon), json_type],
            b"{}",
        )
        .await;
    assert_eq!(
        (status, String::from_utf8(body).unwrap().as_str()),
        (403, r#"{"message":"Unauthorized"}"#)
    );
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/room-1/events/e?private=true",
            &[("Authorization", &authed), json_type],
            br#"{"k":2}"#,
        )
        .await;
    assert_eq!(status, 202);
    let Frame::Binary(b) = c.recv().await else {
        panic!("expected a type-4 frame")
    };
    assert!(b.ends_with(br#"{"k":2}"#));

    let batch =
        json!({"messages": [{"topic": "room-1", "event": "b", "payload": {"k": 3}, "private": true}]}).to_string();
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &anon), json_type],
            batch.as_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    c.expect_silence(Duration::from_millis(300)).await;
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &authed), json_type],
            batch.as_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(c.recv_event("broadcast").await.payload()["payload"], json!({"k": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_only_refuses_public_joins() {
    let (_pg, s) = setup(&[("PRIVATE_ONLY", "true")]).await;
    let mut c = s.connect("2.0.0").await;
    let (_, r) = c.join_with("realtime:room-1", config(json!({})), Some(&user())).await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "PrivateOnly: This project only allows private channels"
    );
    let (_, r) = c.join_with("realtime:room-1", private(json!({})), Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_newest_oldest_first_once() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let url = pg.url();
    // Streaming starts late, so the stored messages are also delivered live after the
    // join: the replayed ones must not arrive twice.
    let s = Server::start_with(&[("DATABASE_URL", url.as_str()), ("REPLICATION_START_DELAY_MS", "1500")]).await;
    pg.exec(POLICIES).await;
    pg.exec("select realtime.send('{\"n\":1}', 'ev', 'room-1', true); select realtime.send('{\"n\":2}', 'ev', 'room-1', true); select realtime.send('{\"n\":3}', 'ev', 'room-1', true);").await;

    let mut c = s.connect("2.0.0").await;
    let replay = private(json!({"broadcast": {"replay": {"since": 0, "limit": 2}}}));
    let (j, r) = c.join_with("realtime:room-1", replay, Some(&user())).await;
    assert_eq!(r.payload()["status"], "ok");
    for n in [2, 3] {
        let f = c.recv().await;
        assert_eq!(f.json()[0], json!(j), "replayed JSON is a channel push");
        assert_eq!(f.event(), "broadcast");
        assert_eq!(f.payload()["payload"]["n"], n);
        assert_eq!(f.payload()["meta"]["replayed"], true);
    }
    // Message 1 was not replayed (limit 2): it arrives live once streaming starts; 2 and 3 don't again.
    let live = tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("live copy of message 1");
    let Frame::Binary(b) = live else {
        panic!("expected type 4, got {live:?}")
    };
    let body_at = 5 + b[1] as usize + b[2] as usize + b[3] as usize;
    let body: serde_json::Value = serde_json::from_slice(&b[body_at..]).unwrap();
    assert_eq!(body["n"], 1);
    c.expect_silence(Duration::from_millis(800)).await;

    // Bad params and public channels are refused.
    let (_, r) = c
        .join_with(
            "realtime:ro-room",
            private(json!({"broadcast": {"replay": {"since": "yesterday"}}})),
            Some(&user()),
        )
        .await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "UnableToReplayMessages: Replay params are not valid"
    );
    let (_, r) = c
        .join_with(
            "realtime:pub",
            config(json!({"broadcast": {"replay": {"since": 0}}})),
            None,
        )
        .await;
    assert_eq!(
        r.payload()["response"]["reason"],
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
}
