//! Graceful shutdown on SIGTERM: every joined channel hears `Server requested disconnect`,
//! sockets close with 1012 (clients reconnect elsewhere), the process exits in time.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn close_code(c: &mut Client) -> Option<u16> {
    loop {
        match c.recv().await {
            Frame::Close(code) => return code,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn sigterm_announces_closes_with_1012_and_exits() {
    let mut s = Server::start_with(&[("SHUTDOWN_TIMEOUT_MS", "3000")]).await;
    let mut v2 = s.connect("2.0.0").await;
    let mut v1 = s.connect("1.0.0").await;
    v2.join("realtime:wedding", config(json!({}))).await;
    v2.join("realtime:venue", config(json!({}))).await;
    v1.join("realtime:wedding", config(json!({}))).await;

    let started = Instant::now();
    let exit = s.terminate(Duration::from_secs(10)).await;

    let mut topics = Vec::new();
    for _ in 0..2 {
        let sys = v2.recv_event("system").await;
        assert_eq!(
            sys.payload(),
            &json!({"extension": "system", "message": "Server requested disconnect", "status": "ok"})
        );
        topics.push(sys.json()[2].as_str().unwrap().to_owned());
    }
    topics.sort();
    assert_eq!(topics, ["realtime:venue", "realtime:wedding"]);
    assert_eq!(close_code(&mut v2).await, Some(1012));
    let sys = v1.recv_event("system").await;
    assert_eq!(sys.payload()["message"], "Server requested disconnect");
    assert_eq!(close_code(&mut v1).await, Some(1012));

    let exit = exit.expect("the server exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exits within the drain time"
    );

    // Clients reconnect elsewhere and carry on.
    let other = Server::start().await;
    let mut a = other.connect("2.0.0").await;
    let mut b = other.connect("1.0.0").await;
    let ja = a.join("realtime:wedding", config(json!({}))).await;
    b.join("realtime:wedding", config(json!({}))).await;
    let r = a.make_ref();
    a.push(
        Some(&ja),
        Some(&r),
        "realtime:wedding",
        "broadcast",
        json!({"type": "broadcast", "event": "back", "payload": {}}),
    )
    .await;
    assert_eq!(b.recv_event("broadcast").await.payload()["event"], "back");
}

#[tokio::test]
async fn new_connections_are_refused_during_shutdown() {
    // A client that does not read keeps the drain going for the whole timeout.
    let mut s = Server::start_with(&[("SHUTDOWN_TIMEOUT_MS", "1500")]).await;
    let _stuck = s.connect("2.0.0").await;
    let port = s.port;
    let exit = tokio::spawn(async move { s.terminate(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "the listener is closed once shutdown starts"
    );
    let exit = exit.await.unwrap().expect("exits after the drain timeout");
    assert!(exit.success());
}
