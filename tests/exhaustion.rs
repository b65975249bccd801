//! Resource exhaustion by clients that hold no secret: sockets that never finish a
//! request (or send nothing) under a low open-file limit, running out of descriptors,
//! and one anon connection joining channels with megabyte topic names. Each test starts
//! the real binary and measures what the issue measured: whether the health check and new
//! WebSockets are still served, and the process' resident memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Half the stalled sockets send part of a request head, half send nothing.
async fn stalled_sockets(port: u16, n: usize) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await
                .unwrap();
        }
        socks.push(s);
    }
    socks
}

/// `/healthcheck` answers 200 within `within`.
async fn healthy(s: &Server, within: Duration) {
    let started = Instant::now();
    let (status, _, body) = tokio::time::timeout(within, s.http("GET", "/healthcheck", &[], b""))
        .await
        .unwrap_or_else(|_| panic!("/healthcheck did not answer within {within:?}"));
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    eprintln!("healthcheck answered in {:?}", started.elapsed());
}

/// A new WebSocket connects, joins and gets its heartbeat answered.
async fn websocket_served(s: &Server) {
    let mut c = tokio::time::timeout(Duration::from_secs(5), s.connect_url(&s.ws_url(&ws_query()), false))
        .await
        .expect("the upgrade completes in time")
        .expect("the upgrade succeeds");
    c.join("realtime:still-served", config(json!({}))).await;
    c.push(None, Some("hb"), "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.recv_event("phx_reply").await.json()[1], "hb");
}

fn ws_query() -> String {
    format!("apikey={}&vsn=2.0.0", token("anon", 3600))
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar answer before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

/// The attack: with the file limit at 200, 250 sockets that send half a header or
/// nothing. The header timeout is long here, so only the pending-connection cap can keep
/// descriptors free: `/healthcheck` and a WebSocket upgrade + join must still work.
#[tokio::test]
async fn stalled_sockets_at_a_low_file_limit_do_not_starve_new_clients() {
    let (s, _log) = Server::start_with_nofile(200, &[("HTTP_HEADER_TIMEOUT_MS", "60000")]).await;
    let mut socks = stalled_sockets(s.port, 250).await;
    // Let the server accept what it can.
    tokio::time::sleep(Duration::from_millis(500)).await;
    healthy(&s, Duration::from_secs(3)).await;
    websocket_served(&s).await;
    // A second wave does not change that.
    socks.extend(stalled_sockets(s.port, 250).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        healthy(&s, Duration::from_secs(3)).await;
    }
    websocket_served(&s).await;
    // The oldest stalled sockets were the ones closed to make room.
    let mut closed = 0;
    for sock in socks.iter_mut().take(100) {
        closed += usize::from(closed_within(sock, Duration::from_millis(20)).await);
    }
    assert!(
        closed >= 90,
        "only {closed} of the 100 oldest stalled sockets were closed"
    );
}

/// Sockets that send nothing or half a header are closed after HTTP_HEADER_TIMEOUT_MS;
/// a complete request on a fresh socket is still answered meanwhile.
#[tokio::test]
async fn stalled_sockets_are_closed_after_the_header_timeout() {
    let s = Server::start_with(&[("HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut socks = stalled_sockets(s.port, 40).await;
    let started = Instant::now();
    healthy(&s, Duration::from_secs(2)).await;
    // Not before the timeout ...
    assert!(!closed_within(&mut socks[0], Duration::from_millis(500)).await);
    // ... but soon after it.
    for (i, sock) in socks.iter_mut().enumerate() {
        let left = Duration::from_millis(2500).saturating_sub(started.elapsed());
        assert!(
            closed_within(sock, left).await,
            "stalled socket {i} still open after 2.5 s"
        );
    }
    // A keep-alive connection that goes quiet after its response is closed the same way.
    let mut ka = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    ka.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = ka.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_within(&mut ka, Duration::from_millis(2500)).await,
        "idle keep-alive connection still open"
    );
}

/// After the upgrade, a socket that sends no frame at all is pinged after
/// PING_INTERVAL_MS and dropped after twice that (no extra first-frame deadline is needed:
/// supabase-js and the Python client answer pings, so they never trip it).
#[tokio::test]
async fn an_upgraded_socket_that_sends_nothing_is_dropped_after_two_ping_intervals() {
    let s = Server::start_with(&[("PING_INTERVAL_MS", "400")]).await;
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let req = format!(
        "GET /realtime/v1/websocket?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ws_query()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = Instant::now();
    assert!(
        closed_within(&mut sock, Duration::from_secs(3)).await,
        "still open after 3 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed after {:?}",
        started.elapsed()
    );
}

/// Out of descriptors because of WebSockets (which count toward MAX_CONCURRENT_USERS, not
/// the pending cap): the open connections keep being served, `accept failed` is logged
/// once, not per attempt, and once descriptors are free again new clients get in.
#[tokio::test]
async fn running_out_of_descriptors_is_logged_once_and_open_connections_are_served() {
    let (s, mut log) = Server::start_with_nofile(200, &[]).await;
    let url = s.ws_url(&ws_query());
    let mut open = Vec::new();
    // Connect until the server cannot accept any more.
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.connect_url(&url, false)).await {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(e)) => panic!(
                "upgrade refused instead of stalling after {} WebSockets: {e}",
                open.len()
            ),
            Err(_) => break,
        }
        assert!(open.len() < 200, "the file limit did not apply");
    }
    eprintln!("{} WebSockets open at the file limit", open.len());
    while log.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut failures = 0;
    while let Ok(line) = log.try_recv() {
        failures += usize::from(line.contains("accept failed"));
    }
    assert!(failures <= 1, "{failures} `accept failed` lines in 3 s");
    // The open ones are served.
    for (i, c) in open.iter_mut().enumerate().step_by(20) {
        let r = format!("hb{i}");
        c.push(None, Some(&r), "phoenix", "heartbeat", json!({})).await;
        assert_eq!(c.recv_event("phx_reply").await.json()[1], r.as_str());
    }
    // Free some descriptors: the accept loop recovers within its longest pause.
    open.truncate(open.len() - 20);
    tokio::time::sleep(Duration::from_millis(200)).await;
    healthy(&s, Duration::from_secs(3)).await;
    websocket_served(&s).await;
}

/// VmRSS of `pid`, in KB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The measurement: one anon connection joining 40 channels with 4 MB topic
/// names. Every join is refused with the topic limit's error, memory stays near the
/// baseline while it runs, and is given back after the connection closes.
#[tokio::test]
async fn megabyte_topics_are_refused_and_leave_no_memory_behind() {
    let s = Server::start().await;
    let mut witness = s.connect("2.0.0").await;
    witness.join("realtime:witness", config(json!({}))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_kb(s.pid());
    let mut c = s.connect("2.0.0").await;
    let mut peak = 0;
    let mut replies = Vec::new();
    for i in 0..40 {
        let topic = format!("realtime:{i}{}", "t".repeat(4 * 1024 * 1024));
        let (_, reply) = c.join_with(&topic, config(json!({})), None).await;
        assert_eq!(reply.json()[2], topic.as_str());
        replies.push(reply.payload().clone());
        peak = peak.max(rss_kb(s.pid()));
    }
    // The connection is still served.
    c.push(None, Some("hb"), "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.recv_event("phx_reply").await.json()[1], "hb");
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(s.pid());
    eprintln!("RSS: baseline {baseline} KB, peak {peak} KB, after close {after} KB");
    assert!(
        peak < baseline + 64 * 1024,
        "RSS peaked at {peak} KB (baseline {baseline} KB)"
    );
    assert!(
        after < baseline + 16 * 1024,
        "RSS {after} KB after the connection closed (baseline {baseline} KB)"
    );
    let refused =
        json!({"status": "error", "response": {"reason": "TopicNameTooLong: The topic name is longer than 255 bytes"}});
    assert!(replies.iter().all(|r| *r == refused), "{:?}", replies.first());
    witness.push(None, Some("w"), "phoenix", "heartbeat", json!({})).await;
    assert_eq!(witness.recv_event("phx_reply").await.json()[1], "w");
}

/// A topic of exactly MAX_TOPIC_BYTES joins; one byte more is refused (at once, not after
/// the join error backoff), and MAX_TOPIC_BYTES is configurable.
#[tokio::test]
async fn the_topic_limit_is_exact_and_configurable() {
    let s = Server::start_with(&[("MAX_TOPIC_BYTES", "20"), ("CHANNEL_ERROR_BACKOFF_MS", "5000")]).await;
    let mut c = s.connect("1.0.0").await;
    let at_limit = format!("realtime:{}", "a".repeat(11));
    assert_eq!(at_limit.len(), 20);
    c.join(&at_limit, config(json!({}))).await;
    let over = format!("realtime:{}", "é".repeat(6));
    assert_eq!(over.len(), 21);
    let started = Instant::now();
    let (_, reply) = c.join_with(&over, config(json!({})), None).await;
    assert!(started.elapsed() < Duration::from_secs(2), "refused after the backoff");
    assert_eq!(
        reply.payload(),
        &json!({"status": "error", "response": {"reason": "TopicNameTooLong: The topic name is longer than 20 bytes"}})
    );
}
