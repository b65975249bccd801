//! The channels and presence REST API: `GET /api/channels`, `GET|POST
//! /api/channels/:topic/presence`, `DELETE /api/channels/:topic/presence/:key`, against
//! the real binary with real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// `(status, body as JSON or Null)` of a request with a bearer token.
async fn call(s: &Server, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, resp) = s
        .http(
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            &body,
        )
        .await;
    (status, serde_json::from_slice(&resp).unwrap_or(Value::Null))
}

/// Tracks and waits for the reply and the diff.
async fn track(c: &mut Client, join_ref: &str, topic: &str, payload: Value) {
    common::track(c, join_ref, topic, payload).await;
    c.recv_event("phx_reply").await;
    c.recv_event("presence_diff").await;
}

fn presence_config(key: &str) -> Value {
    config(json!({"presence": {"key": key, "enabled": true}}))
}

#[tokio::test]
async fn channels_list_counts_members_and_presence_keys_and_pages() {
    let s = Server::start().await;
    let service = token("service_role", 60);
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("1.0.0").await;
    let ja = a.join("realtime:room:1", presence_config("alice")).await;
    a.recv_event("presence_state").await;
    let jb = b.join("realtime:room:1", presence_config("bob")).await;
    b.recv_event("presence_state").await;
    track(&mut a, &ja, "realtime:room:1", json!({})).await;
    track(&mut b, &jb, "realtime:room:1", json!({})).await;
    // A second tab of alice: two metas, still one key.
    let mut a2 = s.connect("2.0.0").await;
    let ja2 = a2.join("realtime:room:1", presence_config("alice")).await;
    a2.recv_event("presence_state").await;
    track(&mut a2, &ja2, "realtime:room:1", json!({})).await;
    b.join("realtime:room:1x", presence_config("alice")).await;
    a.join("realtime:room:2", config(json!({}))).await;
    a.join("realtime:team:a", config(json!({"private": false}))).await;

    let (status, body) = call(&s, "GET", "/api/channels", &service, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": [
            {"topic": "room:1", "private": false, "members": 3, "presence": 2},
            {"topic": "room:1x", "private": false, "members": 1, "presence": 0},
            {"topic": "room:2", "private": false, "members": 1, "presence": 0},
            {"topic": "team:a", "private": false, "members": 1, "presence": 0},
        ], "next_cursor": null})
    );

    // Prefix and pages of one, through the /realtime/v1 prefix too.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/realtime/v1/api/channels?prefix=room%3A&limit=1&cursor={cursor}");
        let (status, body) = call(&s, "GET", &path, &service, Value::Null).await;
        assert_eq!(status, 200, "{body}");
        let channels = body["channels"].as_array().unwrap();
        assert_eq!(channels.len(), 1, "{body}");
        seen.push(channels[0]["topic"].as_str().unwrap().to_owned());
        match &body["next_cursor"] {
            Value::String(c) => cursor = c.clone(),
            Value::Null => break,
            other => panic!("next_cursor {other}"),
        }
    }
    assert_eq!(seen, ["room:1", "room:1x", "room:2"]);

    // A member leaving is seen at once.
    b.push(Some(&jb), Some("9"), "realtime:room:1", "phx_leave", json!({}))
        .await;
    b.recv_event("phx_reply").await;
    let (_, body) = call(&s, "GET", "/api/channels?prefix=room:1&limit=1", &service, Value::Null).await;
    assert_eq!(
        body["channels"][0],
        json!({"topic": "room:1", "private": false, "members": 2, "presence": 1})
    );
    assert!(body["next_cursor"].is_string(), "room:1x follows: {body}");

    // Errors: no token, a non-service token, bad parameters.
    let (status, _, resp) = s.http("GET", "/api/channels", &[], b"").await;
    assert_eq!(
        (status, resp.as_slice()),
        (401, br#"{"message":"Unauthorized"}"#.as_slice())
    );
    let (status, body) = call(&s, "GET", "/api/channels", &token("anon", 60), Value::Null).await;
    assert_eq!((status, body), (403, json!({"message": "Unauthorized"})));
    for bad in ["limit=0", "limit=1001", "limit=ten", "cursor=nope!"] {
        let (status, body) = call(&s, "GET", &format!("/api/channels?{bad}"), &service, Value::Null).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn presence_get_is_the_presence_state_plus_recent_leaves() {
    let s = Server::start().await;
    let service = token("service_role", 60);
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a.join("realtime:venue", presence_config("coordinator")).await;
    a.recv_event("presence_state").await;
    let jb = b.join("realtime:venue", presence_config("florist")).await;
    b.recv_event("presence_state").await;
    track(&mut a, &ja, "realtime:venue", json!({"role": "coordinator"})).await;
    track(&mut b, &jb, "realtime:venue", json!({"role": "florist"})).await;
    a.recv_event("presence_diff").await;

    // `online` is exactly what a joining client gets as presence_state.
    let mut late = s.connect("2.0.0").await;
    late.join("realtime:venue", presence_config("late")).await;
    let state = late.recv_event("presence_state").await.payload().clone();
    let (status, body) = call(&s, "GET", "/api/channels/venue/presence", &service, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"online": state, "last_seen": {}}));
    assert_eq!(body["online"]["florist"]["metas"][0]["role"], "florist");

    // The florist's socket closes: online no more, seen just now.
    let before = now();
    drop(b);
    a.recv_event("presence_diff").await;
    let (_, body) = call(
        &s,
        "GET",
        "/realtime/v1/api/channels/venue/presence",
        &service,
        Value::Null,
    )
    .await;
    assert_eq!(
        body["online"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["coordinator"]
    );
    let seen = body["last_seen"]["florist"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(body["last_seen"].as_object().unwrap().len(), 1, "{body}");
    // RFC 3339 in UTC with milliseconds, within a second or two of now.
    assert_eq!((seen.len(), &seen[10..11], &seen[23..]), (24, "T", "Z"), "{seen}");
    let secs = rfc3339_secs(seen);
    assert!((before - 1..=now() + 1).contains(&secs), "{seen} vs {before}");

    // Back online: no longer in last_seen.
    let mut b = s.connect("2.0.0").await;
    let jb = b.join("realtime:venue", presence_config("florist")).await;
    b.recv_event("presence_state").await;
    track(&mut b, &jb, "realtime:venue", json!({})).await;
    let (_, body) = call(&s, "GET", "/api/channels/venue/presence", &service, Value::Null).await;
    assert_eq!(body["last_seen"], json!({}));
    assert!(body["online"]["florist"].is_object());

    // Only the service role on a public topic; an unknown topic is empty, not an error.
    let (status, body) = call(
        &s,
        "GET",
        "/api/channels/venue/presence",
        &token("authenticated", 60),
        Value::Null,
    )
    .await;
    assert_eq!((status, body), (403, json!({"message": "Unauthorized"})));
    let (status, body) = call(&s, "GET", "/api/channels/nobody%20here/presence", &service, Value::Null).await;
    assert_eq!((status, body), (200, json!({"online": {}, "last_seen": {}})));
    // The private topic of the same name is another topic.
    let (_, body) = call(
        &s,
        "GET",
        "/api/channels/venue/presence?private=true",
        &service,
        Value::Null,
    )
    .await;
    assert_eq!(body, json!({"online": {}, "last_seen": {}}));
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ` (days from civil, Hinnant).
fn rfc3339_secs(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[tokio::test]
async fn server_presence_joins_refreshes_leaves_at_ttl_and_deletes() {
    let s = Server::start_with(&[("PRESENCE_SERVER_MAX_PER_TOPIC", "2"), ("MAX_PAYLOAD_SIZE_KB", "1")]).await;
    let service = token("service_role", 60);
    let mut a = s.connect("2.0.0").await;
    let mut py = s.connect("1.0.0").await;
    a.join("realtime:wedding", presence_config("coordinator")).await;
    a.recv_event("presence_state").await;
    py.join("realtime:wedding", presence_config("py")).await;
    py.recv_event("presence_state").await;

    let path = "/api/channels/wedding/presence";
    let (status, body) = call(
        &s,
        "POST",
        path,
        &service,
        json!({"key": "dj", "meta": {"status": "in a meeting"}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "dj");
    assert!(body["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    let d = a.recv_event("presence_diff").await;
    let joined = &d.payload()["joins"]["dj"]["metas"][0];
    assert_eq!(
        (&joined["status"], &joined["server"]),
        (&json!("in a meeting"), &json!(true))
    );
    let first_ref = joined["phx_ref"].clone();
    assert_eq!(d.payload()["leaves"], json!({}));
    assert_eq!(
        py.recv_event("presence_diff").await.payload(),
        d.payload(),
        "v1 members too"
    );

    // The same key again replaces the meta: one leave, one join.
    let (status, _) = call(
        &s,
        "POST",
        path,
        &service,
        json!({"key": "dj", "meta": {"status": "free"}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200);
    let d = a.recv_event("presence_diff").await;
    assert_eq!(d.payload()["leaves"]["dj"]["metas"][0]["phx_ref"], first_ref);
    assert_eq!(d.payload()["joins"]["dj"]["metas"][0]["status"], "free");
    assert_eq!(d.payload()["joins"]["dj"]["metas"][0]["phx_ref_prev"], first_ref);

    // A late joiner sees it in its presence_state; the GET shows it.
    let mut late = s.connect("2.0.0").await;
    late.join(
        "realtime:wedding",
        config(json!({"presence": {"key": "x", "enabled": true}})),
    )
    .await;
    let st = late.recv_event("presence_state").await;
    assert_eq!(st.payload()["dj"]["metas"][0]["server"], true);
    let (_, body) = call(&s, "GET", path, &service, Value::Null).await;
    assert_eq!(body["online"]["dj"]["metas"][0]["status"], "free");

    // DELETE: a leave, then 404.
    let (status, _, resp) = s
        .http(
            "DELETE",
            "/realtime/v1/api/channels/wedding/presence/dj",
            &[("apikey", &service)],
            b"",
        )
        .await;
    assert_eq!((status, resp.len()), (204, 0));
    let d = a.recv_event("presence_diff").await;
    assert_eq!(
        (
            d.payload()["joins"].clone(),
            d.payload()["leaves"]["dj"]["metas"][0]["status"].clone()
        ),
        (json!({}), json!("free"))
    );
    let (status, body) = call(&s, "DELETE", "/api/channels/wedding/presence/dj", &service, Value::Null).await;
    assert_eq!((status, body), (404, json!({"message": "Not Found"})));
    let (_, body) = call(&s, "GET", path, &service, Value::Null).await;
    assert!(body["last_seen"]["dj"].is_string(), "{body}");

    // A one-second TTL leaves by itself, about a second later.
    let started = Instant::now();
    let (status, _) = call(
        &s,
        "POST",
        path,
        &service,
        json!({"key": "cal", "meta": {}, "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let d = a.recv_event("presence_diff").await;
    assert!(d.payload()["joins"]["cal"].is_object());
    let d = a.recv_event("presence_diff").await;
    assert!(d.payload()["leaves"]["cal"].is_object(), "{:?}", d.payload());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "left after {took:?}"
    );

    // Limits: two server entries per topic here, 1 KB metas, TTL 1..=86400, a shaped body.
    for key in ["s1", "s2"] {
        let (status, _) = call(&s, "POST", path, &service, json!({"key": key, "ttl_seconds": 60})).await;
        assert_eq!(status, 200, "{key}");
    }
    let (status, body) = call(&s, "POST", path, &service, json!({"key": "s3", "ttl_seconds": 60})).await;
    assert_eq!(
        (status, body),
        (
            422,
            json!({"message": "Too many server presence entries on this topic"})
        )
    );
    let (status, _) = call(
        &s,
        "POST",
        path,
        &service,
        json!({"key": "s1", "meta": {"refresh": 1}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200, "refreshing an existing key is not a new entry");
    let (status, body) = call(
        &s,
        "POST",
        "/api/channels/other/presence",
        &service,
        json!({"key": "big", "meta": {"x": "y".repeat(1600)}, "ttl_seconds": 60}),
    )
    .await;
    assert_eq!((status, body), (422, json!({"message": "Track message size exceeded"})));
    for bad in [
        json!({"key": "k", "ttl_seconds": 0}),
        json!({"key": "k", "ttl_seconds": 86_401}),
        json!({"key": "", "ttl_seconds": 5}),
        json!({"key": "k"}),
        json!({"key": "k", "ttl_seconds": 5, "meta": [1]}),
        json!({"key": 5, "ttl_seconds": 5}),
    ] {
        let (status, body) = call(&s, "POST", "/api/channels/other/presence", &service, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, _, _) = s.http("POST", path, &[("apikey", &service)], b"not json").await;
    assert_eq!(status, 422);
    // Public topics: service role only.
    let (status, body) = call(
        &s,
        "POST",
        path,
        &token("authenticated", 60),
        json!({"key": "k", "ttl_seconds": 5}),
    )
    .await;
    assert_eq!((status, body), (403, json!({"message": "Unauthorized"})));
    let (status, _, _) = s.http("POST", path, &[], b"{}").await;
    assert_eq!(status, 401);
}

/// Users read presence of `venue-1` and `ro-venue` and may write presence only on
/// `venue-1`; a broadcast-only read policy covers `bc-only`.
const PRIVATE_POLICIES: &str = r#"
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
"#;
const PRESENCE_POLICIES: &str = r#"
create policy "read presence" on realtime.messages for select to authenticated
  using ((select realtime.topic()) in ('venue-1', 'ro-venue') and extension in ('broadcast', 'presence'));
create policy "read broadcast" on realtime.messages for select to authenticated
  using ((select realtime.topic()) = 'bc-only' and extension = 'broadcast');
create policy "write presence" on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'venue-1' and extension = 'presence');
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_topics_are_decided_by_presence_policies() {
    let pg = common::pg::Pg::start();
    pg.exec(PRIVATE_POLICIES).await;
    let url = pg.url();
    let s = Server::start_with(&[("DATABASE_URL", url.as_str())]).await;
    pg.exec(PRESENCE_POLICIES).await;
    let user = claims_token(
        json!({"role": "authenticated", "sub": "11111111-1111-1111-1111-111111111111", "exp": now() + 3600}),
    );
    let service = token("service_role", 60);

    // A private member sees the server-set entry a user posted.
    let mut m = s.connect("2.0.0").await;
    let mut cfg = presence_config("guest");
    cfg["private"] = json!(true);
    let (_, r) = m.join_with("realtime:venue-1", cfg, Some(&user)).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    m.recv_event("presence_state").await;
    let post = json!({"key": "caterer", "meta": {"eta": "10:30"}, "ttl_seconds": 60});
    let (status, body) = call(
        &s,
        "POST",
        "/api/channels/venue-1/presence?private=true",
        &user,
        post.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let d = m.recv_event("presence_diff").await;
    assert_eq!(d.payload()["joins"]["caterer"]["metas"][0]["server"], true);

    for (path, expected) in [
        ("/api/channels/venue-1/presence?private=true", 200),
        ("/api/channels/ro-venue/presence?private=true", 200),
        ("/api/channels/bc-only/presence?private=true", 403),
        ("/api/channels/elsewhere/presence?private=true", 403),
        // The public topic of the same name: service role only.
        ("/api/channels/venue-1/presence", 403),
    ] {
        let (status, body) = call(&s, "GET", path, &user, Value::Null).await;
        assert_eq!(status, expected, "{path}: {body}");
        if status == 403 {
            assert_eq!(body, json!({"message": "Unauthorized"}));
        }
    }
    let (_, body) = call(
        &s,
        "GET",
        "/api/channels/venue-1/presence?private=true",
        &user,
        Value::Null,
    )
    .await;
    assert_eq!(body["online"]["caterer"]["metas"][0]["eta"], "10:30");

    // Writing needs the insert policy.
    let (status, _) = call(
        &s,
        "POST",
        "/api/channels/ro-venue/presence?private=true",
        &user,
        post.clone(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &s,
        "DELETE",
        "/api/channels/ro-venue/presence/caterer?private=true",
        &user,
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &s,
        "DELETE",
        "/api/channels/venue-1/presence/caterer?private=true",
        &user,
        Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    assert!(m.recv_event("presence_diff").await.payload()["leaves"]["caterer"].is_object());

    // The service role reads any private topic.
    let (status, body) = call(
        &s,
        "GET",
        "/api/channels/ro-venue/presence?private=true",
        &service,
        Value::Null,
    )
    .await;
    assert_eq!((status, body), (200, json!({"online": {}, "last_seen": {}})));
}
