//! REST broadcast: batch and single endpoints, auth, validation, content types.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn batch_reaches_v2_and_v1_members_as_text() {
    let s = Server::start().await;
    let mut js = s.connect("2.0.0").await;
    let mut py = s.connect("1.0.0").await;
    js.join("realtime:room1", config(json!({}))).await;
    py.join("realtime:room1", config(json!({}))).await;
    let key = token("anon", 60);
    let body = json!({"messages": [{"topic": "room1", "event": "e", "payload": {"a": 1}, "private": false}, {"topic": "room1", "event": "with-id", "payload": {}, "id": "abc"}]});
    for path in ["/realtime/v1/api/broadcast?apikey=x&vsn=2.0.0", "/api/broadcast"] {
        let (status, _, resp) = s
            .http(
                "POST",
                path,
                &[("apikey", &key), ("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            )
            .await;
        assert_eq!((status, resp.len()), (202, 0), "{path}");
        let Frame::Text(_, raw) = js.recv().await else { panic!() };
        assert_eq!(
            raw,
            r#"[null,null,"realtime:room1","broadcast",{"event":"e","payload":{"a":1},"type":"broadcast"}]"#
        );
        assert_eq!(
            js.recv().await.payload(),
            &json!({"event": "with-id", "meta": {"id": "abc"}, "payload": {}, "type": "broadcast"})
        );
        let Frame::Text(_, raw) = py.recv().await else { panic!() };
        assert_eq!(
            raw,
            r#"{"event":"broadcast","payload":{"event":"e","payload":{"a":1},"type":"broadcast"},"ref":null,"topic":"realtime:room1"}"#
        );
        py.recv().await;
    }
}

#[tokio::test]
async fn batch_validation_and_auth() {
    let s = Server::start().await;
    let key = token("anon", 60);
    let body = json!({"messages": [{"topic": "t"}, {"payload": {"data": "data"}}, {"topic": "t", "event": "e", "payload": {}}]});
    let (status, _, resp) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &format!("Bearer {key}"))],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 422);
    let resp: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(
        resp,
        json!({"errors": {"messages": [{"payload": ["can't be blank"], "event": ["can't be blank"]}, {"topic": ["can't be blank"], "event": ["can't be blank"]}, {}]}})
    );

    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope".to_string())],
        vec![("apikey", token("anon", -5))],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, resp) = s.http("POST", "/api/broadcast", &h, b"{\"messages\":[]}").await;
        assert_eq!(
            (status, String::from_utf8(resp).unwrap().as_str()),
            (401, r#"{"message":"Unauthorized"}"#)
        );
    }
}

#[tokio::test]
async fn private_batch_messages_are_not_delivered() {
    let s = Server::start().await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:room", config(json!({}))).await;
    let body = json!({"messages": [{"topic": "room", "event": "e", "payload": {}, "private": true}]});
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("apikey", &token("service_role", 60))],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn single_endpoint_json_binary_and_errors() {
    let s = Server::start().await;
    let mut js = s.connect("2.0.0").await;
    let mut py = s.connect("1.0.0").await;
    js.join("realtime:room", config(json!({}))).await;
    py.join("realtime:room", config(json!({}))).await;
    let key = token("anon", 60);
    let auth = format!("Bearer {key}");

    let (status, _, _) = s
        .http(
            "POST",
            "/realtime/v1/api/broadcast/room/events/e",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            br#"{"a":1}"#,
        )
        .await;
    assert_eq!(status, 202);
    let mut want = vec![4, 13, 1, 0, 1];
    want.extend_from_slice(br#"realtime:roome{"a":1}"#);
    assert_eq!(js.recv().await, Frame::Binary(want));
    assert_eq!(
        py.recv().await.payload(),
        &json!({"event": "e", "payload": {"a": 1}, "type": "broadcast"})
    );

    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/room/events/bin",
            &[("Authorization", &auth), ("Content-Type", "application/octet-stream")],
            &[1, 2, 3, 255],
        )
        .await;
    assert_eq!(status, 202);
    let mut want = vec![4, 13, 3, 0, 0];
    want.extend_from_slice(b"realtime:roombin");
    want.extend_from_slice(&[1, 2, 3, 255]);
    assert_eq!(js.recv().await, Frame::Binary(want));
    py.expect_silence(Duration::from_millis(300)).await;

    let (status, _, body) = s
        .http(
            "POST",
            "/api/broadcast/room/events/e",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            b"hi",
        )
        .await;
    assert_eq!(
        (status, String::from_utf8(body).unwrap().as_str()),
        (
            415,
            r#"{"error":"Unsupported Media Type. Use application/json or application/octet-stream"}"#
        )
    );

    let (status, _, body) = s
        .http(
            "POST",
            "/api/broadcast/room/events/e?private=true",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
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
            "/api/broadcast/room/events/e",
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .await;
    assert_eq!(status, 401);

    // Percent-encoded topic and event names.
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:a b", config(json!({}))).await;
    let (status, _, _) = s
        .http(
            "POST",
            "/api/broadcast/a%20b/events/x%2Fy",
            &[("apikey", &key), ("Content-Type", "application/json")],
            b"{}",
        )
        .await;
    assert_eq!(status, 202);
    let Frame::Binary(b) = c.recv().await else { panic!() };
    assert_eq!(&b[5..], b"realtime:a bx/y{}");
}

#[tokio::test]
async fn healthcheck() {
    let s = Server::start().await;
    let (status, _, body) = s.http("GET", "/healthcheck", &[], b"").await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}
