//! Channel lifecycle: join replies and errors, leave, duplicate joins, unmatched topics,
//! postgres_changes echo, access_token refresh and expiry.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn basic_join_reply_v2_and_v1() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.send_text(&json!(["1", "1", "realtime:room", "phx_join", {"config": config(json!({})), "access_token": token("authenticated", 60)}]).to_string()).await;
    let Frame::Text(_, raw) = c.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"["1","1","realtime:room","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]"#
    );

    let mut py = s.connect("1.0.0").await;
    py.send_text(r#"{"event":"phx_join","payload":{"config":{"broadcast":{"self":true,"ack":true},"presence":{"key":"user-1","enabled":false},"private":false,"postgres_changes":[]}},"topic":"realtime:room1","ref":"1","join_ref":"1"}"#).await;
    let Frame::Text(_, raw) = py.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"{"event":"phx_reply","payload":{"response":{"postgres_changes":[]},"status":"ok"},"ref":"1","topic":"realtime:room1"}"#
    );
}

#[tokio::test]
async fn postgres_changes_bindings_are_echoed_with_integer_ids_then_a_system_error() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let bindings = json!([
        {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.46"},
        {"event": "INSERT", "schema": "public", "select": ["id"]}
    ]);
    let (join_ref, reply) = c
        .join_with("realtime:room", config(json!({"postgres_changes": bindings})), None)
        .await;
    let echoed = reply.payload()["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(echoed.len(), 2);
    for (sent, got) in bindings.as_array().unwrap().iter().zip(&echoed) {
        let mut without_id = got.clone();
        let id = without_id.as_object_mut().unwrap().remove("id").unwrap();
        assert!(id.is_u64(), "ids are JSON integers: {id}");
        assert_eq!(&without_id, sent, "each binding is echoed exactly");
    }
    // Same bindings on another socket get the same ids (stable hash).
    let mut d = s.connect("1.0.0").await;
    let (_, reply2) = d
        .join_with("realtime:other", config(json!({"postgres_changes": bindings})), None)
        .await;
    assert_eq!(reply2.payload()["response"]["postgres_changes"], Value::Array(echoed));

    let sys = c.recv_event("system").await;
    assert_eq!(sys.json()[0], json!(join_ref));
    assert_eq!(sys.json()[1], Value::Null);
    assert_eq!(
        sys.payload(),
        &json!({"channel": "room", "extension": "postgres_changes", "message": "Realtime was unable to connect to the project database", "status": "error"})
    );
}

#[tokio::test]
async fn join_errors() {
    let s = Server::start_with(&[("MAX_CHANNELS_PER_CLIENT", "2")]).await;
    let mut c = s.connect("2.0.0").await;
    let reason = |f: &Frame| {
        assert_eq!(f.payload()["status"], "error", "{f:?}");
        f.payload()["response"]["reason"].as_str().unwrap().to_owned()
    };

    let (_, r) = c.join_with("realtime:", config(json!({})), None).await;
    assert_eq!(reason(&r), "TopicNameRequired: You must provide a topic name");

    let (_, r) = c.join_with("realtime:a", config(json!({})), Some("garbage")).await;
    assert_eq!(reason(&r), "MalformedJWT: The token provided is not a valid JWT");

    let (_, r) = c
        .join_with("realtime:a", config(json!({})), Some(&token("anon", -5)))
        .await;
    let text = reason(&r);
    assert!(
        text.starts_with("InvalidJWTToken: Token has expired ") && text.ends_with(" seconds ago"),
        "{text}"
    );

    let no_exp = claims_token(json!({"role": "anon"}));
    let (_, r) = c.join_with("realtime:a", config(json!({})), Some(&no_exp)).await;
    assert_eq!(
        reason(&r),
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
    );

    let (_, r) = c
        .join_with("realtime:secret", config(json!({"private": true})), None)
        .await;
    assert_eq!(
        reason(&r),
        "Unauthorized: You do not have permissions to read from this Channel topic: secret"
    );

    c.join("realtime:one", config(json!({}))).await;
    c.join("realtime:two", config(json!({}))).await;
    let (_, r) = c.join_with("realtime:three", config(json!({})), None).await;
    assert_eq!(reason(&r), "ChannelRateLimitReached: Too many channels");
    // Errors produce no phx_close, and the socket still works.
    c.push(None, Some("99"), "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.recv().await.json()[1], "99");
}

#[tokio::test]
async fn sb_access_token_falls_back_to_the_connection_key() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let (_, r) = c
        .join_with("realtime:a", config(json!({})), Some("sb_publishable_abc"))
        .await;
    assert_eq!(r.payload()["status"], "ok");
}

#[tokio::test]
async fn join_error_replies_wait_for_the_backoff() {
    let s = Server::start_with(&[("CHANNEL_ERROR_BACKOFF_MS", "700")]).await;
    let mut c = s.connect("2.0.0").await;
    c.push(
        Some("1"),
        Some("1"),
        "realtime:",
        "phx_join",
        json!({"config": config(json!({}))}),
    )
    .await;
    // Meanwhile the connection is served.
    c.push(None, Some("2"), "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.recv().await.json()[1], "2");
    let started = std::time::Instant::now();
    let r = c.recv().await;
    assert_eq!(r.payload()["status"], "error");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn leave_replies_then_closes_and_unknown_leave_is_ok() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.send_text(&json!(["1", "1", "realtime:room", "phx_join", {"config": config(json!({}))}]).to_string())
        .await;
    c.recv().await;
    c.send_text(r#"["1","5","realtime:room","phx_leave",{}]"#).await;
    let Frame::Text(_, reply) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        reply,
        r#"["1","5","realtime:room","phx_reply",{"response":{},"status":"ok"}]"#
    );
    let Frame::Text(_, close) = c.recv().await else {
        panic!()
    };
    assert_eq!(close, r#"["1","1","realtime:room","phx_close",{}]"#);
    // Pushing there now: unmatched topic.
    c.send_text(r#"["1","6","realtime:room","broadcast",{"type":"broadcast","event":"e","payload":{}}]"#)
        .await;
    let Frame::Text(_, raw) = c.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"[null,"6","realtime:room","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    c.send_text(r#"["7","7","realtime:never","phx_leave",{}]"#).await;
    assert_eq!(c.recv().await.payload()["status"], "ok");
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_first() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.send_text(&json!(["1", "1", "realtime:a", "phx_join", {"config": config(json!({}))}]).to_string())
        .await;
    c.recv().await;
    c.send_text(&json!(["2", "2", "realtime:a", "phx_join", {"config": config(json!({}))}]).to_string())
        .await;
    let Frame::Text(_, close) = c.recv().await else {
        panic!()
    };
    assert_eq!(close, r#"["1","1","realtime:a","phx_close",{}]"#);
    let Frame::Text(_, reply) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        reply,
        r#"["2","2","realtime:a","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn non_realtime_topic_is_unmatched() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.send_text(&json!(["1", "1", "other:topic", "phx_join", {}]).to_string())
        .await;
    let Frame::Text(_, raw) = c.recv().await else { panic!() };
    assert_eq!(
        raw,
        r#"[null,"1","other:topic","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
}

#[tokio::test]
async fn access_token_refresh_keeps_the_channel_and_a_bad_one_closes_it() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let j = c
        .join("realtime:room", config(json!({"broadcast": {"self": true}})))
        .await;
    c.push(
        Some(&j),
        Some("3"),
        "realtime:room",
        "access_token",
        json!({"access_token": token("authenticated", 600)}),
    )
    .await;
    c.push(
        Some(&j),
        Some("4"),
        "realtime:room",
        "access_token",
        json!({"access_token": "sb_secret_ignored"}),
    )
    .await;
    c.push(
        Some(&j),
        Some("5"),
        "realtime:room",
        "access_token",
        json!({"access_token": null}),
    )
    .await;
    // No reply to any of them; the channel still delivers.
    c.push(
        Some(&j),
        Some("6"),
        "realtime:room",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {"n": 1}}),
    )
    .await;
    let f = c.recv().await;
    assert_eq!(f.event(), "broadcast", "no reply to access_token pushes: {f:?}");

    c.push(
        Some(&j),
        Some("7"),
        "realtime:room",
        "access_token",
        json!({"access_token": ""}),
    )
    .await;
    let sys = c.recv().await;
    assert_eq!(
        sys.json(),
        &json!([j, null, "realtime:room", "system", {"channel": "room", "extension": "system", "message": "The token provided is not a valid JWT", "status": "error"}])
    );
    let close = c.recv().await;
    assert_eq!(close.json(), &json!([j, j, "realtime:room", "phx_close", {}]));
}

#[tokio::test]
async fn token_expiry_shuts_the_channel_at_exp() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    let short = token("authenticated", 2);
    let (j, r) = c.join_with("realtime:room", config(json!({})), Some(&short)).await;
    assert_eq!(r.payload()["status"], "ok");
    let sys = tokio::time::timeout(Duration::from_secs(4), c.recv_event("system"))
        .await
        .expect("expiry within 4 s");
    let msg = sys.payload()["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Token has expired ") && msg.ends_with(" seconds ago"),
        "{msg}"
    );
    assert_eq!(sys.payload()["status"], "error");
    assert_eq!(c.recv().await.json(), &json!([j, j, "realtime:room", "phx_close", {}]));
}
