//! Broadcast fan-out benchmark: 1 publisher → N subscribers on one topic, through the
//! real `realtime` binary over loopback WebSockets (vsn 2.0.0, binary user broadcasts).
//!
//! The publisher sends at a rising rate; every subscriber records the latency of each
//! message (send time embedded in the payload) in an HDR histogram. Each step prints
//! deliveries/s and p50/p99/max; the run ends with a one-line summary and a JSON record.
//! The load generator shares the machine with the server: figures are indicative and
//! comparable only within one run.
//!
//! `cargo bench --bench fanout -- [--subscribers N] [--step-secs S] [--rates a,b,c]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const SECRET: &str = "bench-secret-bench-secret-bench-secret!!";
const TOPIC: &str = "realtime:bench";

struct Args {
    subscribers: usize,
    step_secs: u64,
    rates: Vec<u64>,
}

fn args() -> Args {
    let mut a = Args {
        subscribers: 1000,
        step_secs: 3,
        rates: vec![100, 250, 500, 1000, 2000, 3000, 4000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--subscribers" => a.subscribers = it.next().and_then(|v| v.parse().ok()).expect("--subscribers N"),
            "--step-secs" => a.step_secs = it.next().and_then(|v| v.parse().ok()).expect("--step-secs S"),
            "--rates" => {
                a.rates = it
                    .next()
                    .expect("--rates a,b")
                    .split(',')
                    .map(|r| r.parse().expect("rate"))
                    .collect()
            }
            _ => {} // cargo passes --bench
        }
    }
    a
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

async fn connect(port: u16, key: &str) -> WebSocket<TokioIo<Upgraded>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    stream.set_nodelay(true).unwrap();
    let req = Request::builder()
        .method("GET")
        .uri(format!(
            "http://127.0.0.1:{port}/realtime/v1/websocket?apikey={key}&vsn=2.0.0"
        ))
        .header("Host", format!("127.0.0.1:{port}"))
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await.expect("handshake");
    ws
}

async fn join(ws: &mut WebSocket<TokioIo<Upgraded>>) {
    let join = json!(["1", "1", TOPIC, "phx_join", {"config": {"broadcast": {"self": false, "ack": false}, "presence": {"key": "", "enabled": false}, "postgres_changes": [], "private": false}}]).to_string();
    ws.write_frame(Frame::text(Payload::Owned(join.into_bytes())))
        .await
        .unwrap();
    loop {
        let f = ws.read_frame().await.expect("join reply");
        if f.opcode == OpCode::Text && std::str::from_utf8(&f.payload).unwrap().contains("phx_reply") {
            assert!(
                std::str::from_utf8(&f.payload).unwrap().contains("\"ok\""),
                "join failed"
            );
            return;
        }
    }
}

/// The type-3 push: topic, event "m", JSON payload `{"t":<ns since epoch>}`.
fn push(t: u64) -> Vec<u8> {
    let payload = format!("{{\"t\":{t}}}");
    let mut b = vec![3, 1, 0, TOPIC.len() as u8, 1, 0, 1];
    b.extend_from_slice(b"1");
    b.extend_from_slice(TOPIC.as_bytes());
    b.extend_from_slice(b"m");
    b.extend_from_slice(payload.as_bytes());
    b
}

/// The send time inside a type-4 frame's `{"t":N}` payload.
fn sent_at(frame: &[u8]) -> Option<u64> {
    let header = 5 + usize::from(*frame.get(1)?) + usize::from(*frame.get(2)?) + usize::from(*frame.get(3)?);
    let body = std::str::from_utf8(frame.get(header..)?).ok()?;
    body.strip_prefix("{\"t\":")?.strip_suffix('}')?.parse().ok()
}

struct Step {
    rate: u64,
    sent: u64,
    delivered: u64,
    deliveries_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[tokio::main]
async fn main() {
    let args = args();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut server = Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start realtime");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("listening line");
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    let pid = server.id().unwrap_or(0);
    let key = realtime::auth::sign_hs256(SECRET, &json!({"role": "anon", "exp": 4_000_000_000u64})).unwrap();

    let epoch = Instant::now();
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap(),
    ));
    let delivered = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let mut joined = Vec::new();
    for _ in 0..args.subscribers {
        let mut ws = connect(port, &key).await;
        join(&mut ws).await;
        joined.push(ws);
    }
    let rss_before = rss_kb(pid);
    for mut ws in joined {
        let (histogram, delivered, recording) = (histogram.clone(), delivered.clone(), recording.clone());
        tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            let mut count = 0u64;
            while let Ok(frame) = ws.read_frame().await {
                if frame.opcode != OpCode::Binary {
                    continue;
                }
                if let Some(t) = sent_at(&frame.payload) {
                    let now = epoch.elapsed().as_nanos() as u64;
                    if recording.load(Ordering::Relaxed) {
                        let _ = local.record(now.saturating_sub(t).max(1_000));
                        count += 1;
                    } else if count > 0 {
                        histogram.lock().unwrap().add(&local).unwrap();
                        delivered.fetch_add(count, Ordering::Relaxed);
                        local.reset();
                        count = 0;
                    }
                }
            }
        });
    }
    let mut publisher = connect(port, &key).await;
    join(&mut publisher).await;

    println!(
        "fanout: 1 publisher → {} subscribers on one topic, server pid {pid}, {} s per step",
        args.subscribers, args.step_secs
    );
    println!(
        "{:>10} {:>10} {:>14} {:>16} {:>9} {:>9} {:>9}",
        "msgs/s", "sent", "delivered", "deliveries/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut steps = Vec::new();
    for &rate in &args.rates {
        histogram.lock().unwrap().reset();
        delivered.store(0, Ordering::Relaxed);
        recording.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(args.step_secs) {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let t = epoch.elapsed().as_nanos() as u64;
                publisher
                    .write_frame(Frame::binary(Payload::Owned(push(t))))
                    .await
                    .unwrap();
                sent += 1;
            }
        }
        // Let in-flight messages land, then stop recording; receivers flush on the next frame.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elapsed = started.elapsed().as_secs_f64();
        recording.store(false, Ordering::Relaxed);
        publisher
            .write_frame(Frame::binary(Payload::Owned(push(epoch.elapsed().as_nanos() as u64))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let h = histogram.lock().unwrap().clone();
        let n = delivered.load(Ordering::Relaxed);
        let step = Step {
            rate,
            sent,
            delivered: n,
            deliveries_per_sec: n as f64 / (elapsed - 0.5).max(0.001),
            p50_ms: h.value_at_quantile(0.5) as f64 / 1e6,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1e6,
            max_ms: h.max() as f64 / 1e6,
        };
        println!(
            "{:>10} {:>10} {:>14} {:>16.0} {:>9.2} {:>9.2} {:>9.2}",
            step.rate, step.sent, step.delivered, step.deliveries_per_sec, step.p50_ms, step.p99_ms, step.max_ms
        );
        let over = step.p99_ms > 50.0 || step.delivered < step.sent * args.subscribers as u64 * 9 / 10;
        steps.push(step);
        if over {
            break;
        }
    }
    let best = steps
        .iter()
        .filter(|s| s.p99_ms <= 25.0 && s.delivered >= s.sent * args.subscribers as u64 * 99 / 100)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let rss_after = rss_kb(pid);
    match best {
        Some(b) => println!(
            "summary: max {:.0} deliveries/s with p99 {:.2} ms (≤ 25 ms) at {} msgs/s × {} subscribers; server RSS {} KB idle-joined → {} KB after",
            b.deliveries_per_sec, b.p99_ms, b.rate, args.subscribers, rss_before, rss_after
        ),
        None => println!("summary: no step met p99 ≤ 25 ms"),
    }
    let record = json!({
        "bench": "fanout",
        "subscribers": args.subscribers,
        "best_deliveries_per_sec": best.map(|b| b.deliveries_per_sec.round()),
        "best_p99_ms": best.map(|b| b.p99_ms),
        "server_rss_kb_joined": rss_before,
        "server_rss_kb_after": rss_after,
        "steps": steps.iter().map(|s| json!({"rate": s.rate, "sent": s.sent, "delivered": s.delivered, "deliveries_per_sec": s.deliveries_per_sec.round(), "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "max_ms": s.max_ms})).collect::<Vec<_>>(),
    });
    println!("{record}");
    let _ = server.kill().await;
}

/// Resident set size of a process, from /proc (Linux).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
