//! Webhooks out: a receiver started inside the test gets signed batches of
//! `channel.occupied`, `presence.join`, `presence.leave`, `channel.vacated` from the real
//! binary; a refused batch is retried; a full queue drops its oldest batch and counts it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::webhook_receiver::{next, receiver, Received};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "wh-secret";

/// Checks the signature as a receiver would (README "Webhooks"), 5-minute tolerance.
fn verify(r: &Received) {
    let (t, v1) = r
        .signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature {:?}", r.signature));
    let t: i64 = t.parse().unwrap();
    assert!((now() - t).abs() <= 300, "stale signature time {t}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "signature must verify");
    // And a tampered body does not.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body[1..]);
    let other: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(v1, other);
}

/// Events from batches until `pred` holds for the list so far.
async fn events_until(rx: &mut mpsc::UnboundedReceiver<Received>, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut all = Vec::new();
    while !pred(&all) {
        let r = next(rx).await;
        verify(&r);
        let batch: Value = serde_json::from_slice(&r.body).unwrap();
        all.extend(batch["events"].as_array().unwrap().iter().cloned());
    }
    all
}

fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["topic"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn signed_batches_report_occupancy_and_presence_in_order() {
    let (url, mut rx) = receiver(vec![]).await;
    let s = Server::start_with(&[
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_TOPICS", "team:*"),
    ])
    .await;
    let mut c = s.connect("2.0.0").await;
    let started_ms = now() * 1000 - 1000;
    c.join("realtime:unwatched", config(json!({}))).await;
    let j = c
        .join(
            "realtime:team:a",
            config(json!({"presence": {"key": "alice", "enabled": true}})),
        )
        .await;
    c.recv_event("presence_state").await;
    c.push(
        Some(&j),
        Some("5"),
        "realtime:team:a",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"role": "planner"}}),
    )
    .await;
    let events = events_until(&mut rx, |e| e.len() >= 2).await;
    assert_eq!(
        kinds(&events),
        [
            ("channel.occupied".into(), "team:a".into()),
            ("presence.join".into(), "team:a".into())
        ]
    );
    let join = &events[1];
    assert_eq!(
        (&join["key"], &join["meta"]["role"], &join["private"]),
        (&json!("alice"), &json!("planner"), &json!(false))
    );
    assert!(join["meta"]["phx_ref"].is_string());
    for e in &events {
        let ts = e["timestamp"].as_i64().unwrap();
        assert!(
            ts >= started_ms && ts <= now() * 1000 + 1000,
            "millisecond timestamp {ts}"
        );
    }

    // Leaving: the presence leave, then the topic is vacated.
    c.push(Some(&j), Some("6"), "realtime:team:a", "phx_leave", json!({}))
        .await;
    let mut more = events_until(&mut rx, |e| e.len() >= 2).await;
    assert_eq!(
        kinds(&more),
        [
            ("presence.leave".into(), "team:a".into()),
            ("channel.vacated".into(), "team:a".into())
        ]
    );
    assert_eq!(more[0]["meta"]["phx_ref"], join["meta"]["phx_ref"]);
    more.extend(events);
    let mut ids: Vec<&str> = more.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every event has its own id");

    // Server-set presence raises the same events; nothing was sent for `unwatched`.
    let service = token("service_role", 60);
    let (status, _, _) = s
        .http(
            "POST",
            "/api/channels/team:b/presence",
            &[("apikey", &service)],
            br#"{"key":"calendar","meta":{"status":"in a meeting"},"ttl_seconds":60}"#,
        )
        .await;
    assert_eq!(status, 200);
    let events = events_until(&mut rx, |e| !e.is_empty()).await;
    assert_eq!(kinds(&events), [("presence.join".into(), "team:b".into())]);
    assert_eq!(events[0]["meta"]["server"], true);
}

#[tokio::test]
async fn a_refused_batch_is_retried_with_the_same_events() {
    let (url, mut rx) = receiver(vec![500, 503]).await;
    let s = Server::start_with(&[("WEBHOOK_URL", &url), ("WEBHOOK_SECRET", SECRET)]).await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:room", config(json!({}))).await;
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    let third = next(&mut rx).await;
    for r in [&first, &second, &third] {
        verify(r);
    }
    assert_eq!(first.body, second.body, "the same batch, event ids included");
    assert_eq!(second.body, third.body);
    let (gap1, gap2) = (second.at - first.at, third.at - second.at);
    // 200 ms then 400 ms, each ±50 %.
    assert!(gap1 >= Duration::from_millis(90), "backoff {gap1:?}");
    assert!(gap2 >= Duration::from_millis(190), "backoff {gap2:?}");
    let batch: Value = serde_json::from_slice(&third.body).unwrap();
    assert_eq!(
        kinds(batch["events"].as_array().unwrap()),
        [("channel.occupied".into(), "room".into())]
    );
    // Accepted at the third attempt: nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(800), rx.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_batch_and_counts_it() {
    // A receiver that refuses connections: the first batch is retried for a long time,
    // the rest wait in a queue of one.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    let s = Server::start_with(&[
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_QUEUE", "1"),
        ("WEBHOOK_BATCH_MS", "10"),
    ])
    .await;
    let mut c = s.connect("2.0.0").await;
    for i in 0..6 {
        let topic = format!("realtime:t{i}");
        let j = c.join(&topic, config(json!({}))).await;
        c.push(Some(&j), Some("9"), &topic, "phx_leave", json!({})).await;
        c.recv_event("phx_reply").await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = s.http("GET", "/metrics", &[], b"").await;
        let text = String::from_utf8_lossy(&body).into_owned();
        let dropped: f64 = text
            .lines()
            .find(|l| l.starts_with("realtime_webhook_batches_dropped_total{reason=\"queue_full\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        // Six batches, one being retried, one queued: at least four made room.
        if dropped >= 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "queue_full drops: {dropped}\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MESSAGES: usize = 4000;

/// 2,000 broadcasts/s for two seconds to one subscriber while another socket churns
/// (joins, tracks, leaves a topic every 5 ms: webhook events); the time until the
/// subscriber has all of them, in order.
async fn busy_broadcast(s: &Server) -> Duration {
    let mut sub = s.connect("2.0.0").await;
    sub.join("realtime:busy", config(json!({}))).await;
    let mut publisher = s.connect("2.0.0").await;
    let pub_ref = publisher.join("realtime:busy", config(json!({}))).await;
    let mut churn = s.connect("2.0.0").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_churn = stop.clone();
    let churner = tokio::spawn(async move {
        let mut i = 0;
        while !stop_churn.load(std::sync::atomic::Ordering::Relaxed) {
            let topic = format!("realtime:churn{}", i % 50);
            let j = churn
                .join(
                    &topic,
                    config(json!({"presence": {"key": format!("k{i}"), "enabled": true}})),
                )
                .await;
            let track = json!({"type": "presence", "event": "track", "payload": {"i": i}});
            churn.push(Some(&j), Some("t"), &topic, "presence", track).await;
            churn.push(Some(&j), Some("l"), &topic, "phx_leave", json!({})).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        i
    });
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for batch in 0..MESSAGES / 10 {
            tick.tick().await;
            for k in 0..10 {
                let payload = json!({"type": "broadcast", "event": "m", "payload": {"i": batch * 10 + k}});
                publisher
                    .push(Some(&pub_ref), None, "realtime:busy", "broadcast", payload)
                    .await;
            }
        }
        publisher
    });
    let mut next = 0usize;
    while next < MESSAGES {
        let Some(frame) = sub.recv_within(Duration::from_secs(10)).await else {
            panic!("nothing for 10 s after message {next}");
        };
        if frame.event() == "broadcast" {
            assert_eq!(
                frame.payload()["payload"]["i"].as_u64().unwrap() as usize,
                next,
                "lost or out of order"
            );
            next += 1;
        }
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _publisher = sender.await.unwrap();
    let churned = churner.await.unwrap();
    assert!(churned > 50, "the churn made only {churned} joins");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_does_not_slow_a_busy_broadcast() {
    // Accepts connections and never answers: every attempt waits out its 5 s timeout.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", dead.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = dead.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(s);
        }
    });

    let baseline = {
        let s = Server::start().await;
        busy_broadcast(&s).await
    };
    let s = Server::start_with(&[
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_QUEUE", "4"),
        ("WEBHOOK_BATCH_MS", "20"),
    ])
    .await;
    let with_dead = busy_broadcast(&s).await;
    let (_, _, metrics) = s.http("GET", "/metrics", &[], b"").await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    println!(
        "2,000 msgs/s for 2 s: all delivered after {baseline:?} without webhooks, {with_dead:?} with a dead receiver"
    );
    // The receiver was really in the way: it was connected to and batches piled up.
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(
        metrics.contains("realtime_webhook_batches_dropped_total{reason=\"queue_full\"}"),
        "{metrics}"
    );
    // Sending takes 2 s; a stalled fan-out would wait on 5 s timeouts. Room is left for
    // two shared cores, not for a stall.
    assert!(
        with_dead < baseline + Duration::from_millis(1500) && with_dead < Duration::from_secs(5),
        "with a dead receiver {with_dead:?}, without {baseline:?}"
    );
}
