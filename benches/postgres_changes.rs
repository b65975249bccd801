//! Postgres Changes with RLS: N subscribers, each a distinct user (own JWT `sub`), on one
//! table whose policy lets a user see the rows of its group (10 groups, so each row is
//! visible to N/10 subscribers). Inserts (one row per transaction) at rising rates from
//! a separate connection; each row carries its insert time, so a subscriber measures
//! insert→client latency. Starts its own throwaway PostgreSQL 15 and the real binary.
//!
//! `cargo bench --bench postgres_changes -- [--subscribers N] [--rates 10,50] [--step-secs S]`

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/pg.rs"]
mod pg;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-bench-secret-bench-secret!!";
const GROUPS: u64 = 10;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn token(claims: Value) -> String {
    realtime::auth::sign_hs256(SECRET, &claims).unwrap()
}

#[tokio::main]
async fn main() {
    let mut subscribers = 1000usize;
    let mut rates = vec![5u64, 10, 20, 50, 100];
    let mut step_secs = 4u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--subscribers" => subscribers = it.next().unwrap().parse().unwrap(),
            "--rates" => rates = it.next().unwrap().split(',').map(|r| r.parse().unwrap()).collect(),
            "--step-secs" => step_secs = it.next().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let pg = pg::Pg::start();
    pg.exec(
        "create role anon nologin; create role authenticated nologin;
         grant usage on schema public to anon, authenticated;
         create table public.items (id bigserial primary key, grp int not null, sent_at bigint not null, body text);
         alter table items enable row level security;
         create policy by_group on items for select to authenticated
           using (grp = (current_setting('request.jwt.claims', true)::jsonb ->> 'grp')::int);
         grant select on items to authenticated;
         create publication supabase_realtime for table items;",
    )
    .await;
    let mut server = Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("DATABASE_URL", pg.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let anon = token(json!({"role": "anon", "exp": 4_000_000_000u64}));

    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let delivered = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..subscribers {
        let url = format!("ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={anon}&vsn=1.0.0");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        let user = token(
            json!({"role": "authenticated", "sub": format!("00000000-0000-0000-0000-{i:012}"), "grp": (i as u64) % GROUPS, "exp": 4_000_000_000u64}),
        );
        let join = json!({"topic": format!("realtime:items-{i}"), "event": "phx_join", "ref": "1", "join_ref": "1",
            "payload": {"config": {"broadcast": {"self": false}, "presence": {"key": ""}, "private": false,
            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "items"}]}, "access_token": user}});
        ws.send(Message::text(join.to_string())).await.unwrap();
        // Wait for "Subscribed to PostgreSQL".
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("closed while joining")
            };
            if t.contains("Subscribed to PostgreSQL") {
                break;
            }
            assert!(!t.contains("\"status\":\"error\""), "subscribe failed: {t}");
        }
        let (histogram, delivered, recording) = (histogram.clone(), delivered.clone(), recording.clone());
        handles.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut n = 0u64;
            let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
            loop {
                tokio::select! {
                    msg = ws.next() => {
                        let Some(Ok(Message::Text(t))) = msg else { break };
                        if !t.contains("postgres_changes") { continue }
                        let v: Value = serde_json::from_str(&t).unwrap();
                        let sent = v["payload"]["data"]["record"]["sent_at"].as_u64().unwrap_or(0);
                        if recording.load(Ordering::Relaxed) {
                            let _ = local.record(now_us().saturating_sub(sent).max(1));
                            n += 1;
                        } else if n > 0 {
                            histogram.lock().unwrap().add(&local).unwrap();
                            delivered.fetch_add(n, Ordering::Relaxed);
                            local.reset();
                            n = 0;
                        }
                    }
                    _ = heartbeat.tick() => {
                        let _ = ws.send(Message::text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#)).await;
                    }
                }
            }
        }));
    }
    println!(
        "postgres_changes: {subscribers} subscribers, {subscribers} distinct users, RLS table, each row visible to {} of them; joined in {:.1} s",
        subscribers as u64 / GROUPS,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:>10} {:>8} {:>12} {:>14} {:>9} {:>9}",
        "inserts/s", "rows", "delivered", "delivered/s", "p50 ms", "p99 ms"
    );
    let writer = pg.client().await;
    let insert = writer
        .prepare("insert into items (grp, sent_at, body) values ($1, $2, 'x')")
        .await
        .unwrap();
    let mut results = Vec::new();
    let mut row = 0u64;
    for &rate in &rates {
        histogram.lock().unwrap().reset();
        delivered.store(0, Ordering::Relaxed);
        recording.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while t0.elapsed() < Duration::from_secs(step_secs) {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                writer
                    .execute(&insert, &[&((row % GROUPS) as i32), &(now_us() as i64)])
                    .await
                    .unwrap();
                sent += 1;
                row += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let elapsed = t0.elapsed().as_secs_f64() - 2.0;
        recording.store(false, Ordering::Relaxed);
        // One more row of every group makes each receiver flush its counters.
        for g in 0..GROUPS {
            writer
                .execute(&insert, &[&(g as i32), &(now_us() as i64)])
                .await
                .unwrap();
            row += 1;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let h = histogram.lock().unwrap().clone();
        let n = delivered.load(Ordering::Relaxed);
        let expected = sent * subscribers as u64 / GROUPS;
        let (p50, p99) = (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        );
        println!(
            "{rate:>10} {sent:>8} {n:>12} {:>14.0} {p50:>9.1} {p99:>9.1}",
            n as f64 / elapsed
        );
        results.push(json!({"inserts_per_sec": rate, "rows": sent, "delivered": n, "expected": expected, "delivered_per_sec": (n as f64 / elapsed).round(), "p50_ms": p50, "p99_ms": p99}));
        if n < expected * 9 / 10 || p99 > 2000.0 {
            break;
        }
    }
    let best = results
        .iter()
        .filter(|r| r["delivered"] == r["expected"])
        .max_by(|a, b| {
            a["delivered_per_sec"]
                .as_f64()
                .partial_cmp(&b["delivered_per_sec"].as_f64())
                .unwrap()
        });
    if let Some(b) = best {
        println!("summary: {} delivered msgs/s with RLS for {subscribers} distinct users (p50 {} ms, p99 {} ms) at {} inserts/s", b["delivered_per_sec"], b["p50_ms"], b["p99_ms"], b["inserts_per_sec"]);
    } else {
        println!("summary: no step delivered everything");
    }
    println!(
        "{}",
        json!({"bench": "postgres_changes_rls", "subscribers": subscribers, "groups": GROUPS, "steps": results})
    );
    let _ = server.kill().await;
}
