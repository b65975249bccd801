//! Scenario 6, Postgres Changes with RLS: N subscribers, each a distinct user (own JWT
//! `sub`), on one table whose policy lets a user see the rows of its group (10 groups, so
//! each row is visible to N/10 subscribers). Single-row inserts at rising rates from a
//! separate connection; each row carries its insert time (taken just before the insert,
//! an autocommit transaction), so subscribers measure commit→client latency (an upper
//! bound: it includes the insert itself). Starts its own throwaway PostgreSQL 15 and the
//! real binary, once per mode:
//!
//! * `batched`: RLS on, `POSTGRES_CHANGES_RLS_BATCH=true` (the default);
//! * `unbatched`: RLS on, `POSTGRES_CHANGES_RLS_BATCH=false` (one check per subscriber and
//!   row, as Supabase does);
//! * `off`: a table without RLS; each subscriber filters on its group (`grp=eq.G`), so the
//!   same rows reach the same subscribers and only the RLS work is missing.
//!
//! Each mode prints a one-line summary and a JSON record (the best step that delivered
//! everything), appended to the file named by `BENCH_RESULTS` if set.
//!
//! `cargo bench --bench postgres_changes -- [--subscribers N] [--rates 10,50]
//!  [--step-secs S] [--rls batched,unbatched,off]`
//!
//! `PG_BENCH_SMOKE=1` runs a tiny scale (20 subscribers, 2 s steps) that only checks the
//! harness works; figures never fail it (it fails only if a mode delivered nothing). It is
//! also the scale when `--bench` is absent (`cargo test --all-targets`); to run the binary
//! by hand at full scale, pass `--bench`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/pg.rs"]
mod pg;

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-bench-secret-bench-secret!!";
const GROUPS: u64 = 10;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn token(claims: Value) -> String {
    realtime::auth::sign_hs256(SECRET, &claims).unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Batched,
    Unbatched,
    Off,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Unbatched => "unbatched",
            Mode::Off => "off",
        }
    }
    fn parse(s: &str) -> Mode {
        match s {
            "batched" => Mode::Batched,
            "unbatched" => Mode::Unbatched,
            "off" => Mode::Off,
            _ => panic!("--rls takes batched, unbatched, off"),
        }
    }
    fn table(self) -> &'static str {
        if self == Mode::Off {
            "items_open"
        } else {
            "items"
        }
    }
}

struct Options {
    subscribers: usize,
    rates: Vec<u64>,
    step_secs: u64,
    modes: Vec<Mode>,
    smoke: bool,
}

/// Counters shared with the subscriber tasks.
struct Shared {
    /// Rows inserted before this (unix µs) belong to an earlier step and are not counted.
    step_start: AtomicU64,
    delivered: AtomicU64,
    /// Receive time of the last counted frame (unix µs).
    last_us: AtomicU64,
    histograms: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>>,
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: it gets the
    // smoke scale, so test runs stay short.
    let smoke = std::env::var("PG_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
        || !std::env::args().any(|a| a == "--bench");
    let mut o = Options {
        subscribers: if smoke { 20 } else { 1000 },
        rates: if smoke {
            vec![5, 20]
        } else {
            vec![10, 20, 50, 100, 200, 500, 1000, 2000]
        },
        step_secs: if smoke { 2 } else { 5 },
        modes: vec![Mode::Batched, Mode::Unbatched, Mode::Off],
        smoke,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--subscribers" => o.subscribers = it.next().unwrap().parse().unwrap(),
            "--rates" => o.rates = it.next().unwrap().split(',').map(|r| r.parse().unwrap()).collect(),
            "--step-secs" => o.step_secs = it.next().unwrap().parse().unwrap(),
            "--rls" => o.modes = it.next().unwrap().split(',').map(Mode::parse).collect(),
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
         create table public.items_open (id bigserial primary key, grp int not null, sent_at bigint not null, body text);
         grant select on items_open to authenticated;
         create publication supabase_realtime for table items, items_open;",
    )
    .await;
    let mut failed = false;
    for &mode in &o.modes {
        failed |= !run_mode(&pg, &o, mode).await;
    }
    if smoke && failed {
        eprintln!("smoke: the harness delivered nothing in some mode");
        std::process::exit(1);
    }
}

/// Starts the server with this mode's settings; returns it and its port.
async fn start_server(pg: &pg::Pg, mode: Mode) -> (Child, u16) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("DATABASE_URL", pg.url())
        .env("SLOT_NAME", format!("bench_{}", mode.name()))
        .env("REPLICATION_START_DELAY_MS", "0")
        .env("POSTGRES_CHANGES_RLS_BATCH", (mode != Mode::Unbatched).to_string())
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
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
    (server, port)
}

/// One subscriber: joins, waits for "Subscribed to PostgreSQL", then counts frames.
async fn subscriber(port: u16, i: usize, mode: Mode, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let anon = token(json!({"role": "anon", "exp": 4_000_000_000u64}));
    let url = format!("ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={anon}&vsn=1.0.0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let grp = (i as u64) % GROUPS;
    let user = token(
        json!({"role": "authenticated", "sub": format!("00000000-0000-0000-0000-{i:012}"),
        "grp": grp, "exp": 4_000_000_000u64}),
    );
    let mut binding = json!({"event": "INSERT", "schema": "public", "table": mode.table()});
    if mode == Mode::Off {
        binding["filter"] = json!(format!("grp=eq.{grp}"));
    }
    let join = json!({"topic": format!("realtime:items-{i}"), "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"self": false}, "presence": {"key": ""}, "private": false,
        "postgres_changes": [binding]}, "access_token": user}});
    ws.send(Message::text(join.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("closed while joining")
        };
        if t.contains("Subscribed to PostgreSQL") {
            break;
        }
        assert!(!t.contains("\"status\":\"error\""), "subscribe failed: {t}");
    }
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap(),
    ));
    shared.histograms.lock().unwrap().push(histogram.clone());
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                msg = ws.next() => {
                    // The server pings connections that sent nothing for a while:
                    // tungstenite answers; only a closed socket ends the subscriber.
                    let t = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    if !t.contains("postgres_changes") { continue }
                    let now = now_us();
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let sent = v["payload"]["data"]["record"]["sent_at"].as_u64().unwrap_or(0);
                    if sent >= shared.step_start.load(Ordering::Relaxed) {
                        let _ = histogram.lock().unwrap().record(now.saturating_sub(sent).max(1));
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        shared.last_us.fetch_max(now, Ordering::Relaxed);
                    }
                }
                _ = heartbeat.tick() => {
                    let _ = ws.send(Message::text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#)).await;
                }
            }
        }
    })
}

/// CPU time (user + system) a process has used, in seconds; 0 if it is gone.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// The server's process and its database backends (pool, walsender).
async fn pipeline_pids(admin: &tokio_postgres::Client, server: u32) -> Vec<u32> {
    let mut pids = vec![server];
    for r in admin
        .query(
            "select pid from pg_stat_activity where application_name = 'realtime-rs'",
            &[],
        )
        .await
        .unwrap()
    {
        pids.push(r.get::<_, i32>(0) as u32);
    }
    pids
}

/// Runs one mode; false if it delivered nothing at all (the harness is broken).
async fn run_mode(pg: &pg::Pg, o: &Options, mode: Mode) -> bool {
    let (mut server, port) = start_server(pg, mode).await;
    let shared = Arc::new(Shared {
        step_start: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        histograms: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    let handles: Vec<_> = futures_util::stream::iter(0..o.subscribers)
        .map(|i| subscriber(port, i, mode, shared.clone()))
        .buffer_unordered(32)
        .collect()
        .await;
    let rls = match mode {
        Mode::Off => "no RLS (filter grp=eq.G)",
        Mode::Batched => "RLS, batched",
        Mode::Unbatched => "RLS, unbatched",
    };
    println!(
        "postgres_changes [{}]: {} subscribers, {} distinct users, {rls}, each row visible to {} of them; joined in {:.1} s",
        mode.name(),
        o.subscribers,
        o.subscribers,
        o.subscribers as u64 / GROUPS,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:>10} {:>10} {:>8} {:>12} {:>14} {:>9} {:>9} {:>8} {:>10}",
        "rate", "inserts/s", "rows", "delivered", "delivered/s", "p50 ms", "p99 ms", "cpu s", "cpu µs/msg"
    );
    let writer = pg.client().await;
    // The throwaway cluster runs with synchronous_commit=off, so a commit would wait for
    // the WAL writer (every 200 ms) before the walsender may send it: commit as a
    // production database does (fsync stays off, so this costs little).
    writer.batch_execute("set synchronous_commit = on").await.unwrap();
    let insert = writer
        .prepare(&format!(
            "insert into {} (grp, sent_at, body) values ($1, $2, 'x')",
            mode.table()
        ))
        .await
        .unwrap();
    let admin = pg.client().await;
    let server_pid = server.id().unwrap_or(0);
    let mut steps = Vec::new();
    let mut row = 0u64;
    let mut any = false;
    for &rate in &o.rates {
        for h in shared.histograms.lock().unwrap().iter() {
            h.lock().unwrap().reset();
        }
        shared.delivered.store(0, Ordering::SeqCst);
        shared.last_us.store(0, Ordering::SeqCst);
        let pids = pipeline_pids(&admin, server_pid).await;
        let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
        let step_start = now_us();
        shared.step_start.store(step_start, Ordering::SeqCst);
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut per_group = [0u64; GROUPS as usize];
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while t0.elapsed() < Duration::from_secs(o.step_secs) {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            // Due rows go out pipelined on the one connection, each its own transaction.
            let mut batch = Vec::new();
            while sent < due {
                let g = (row % GROUPS) as i32;
                per_group[g as usize] += 1;
                let (writer, insert) = (&writer, &insert);
                batch.push(async move { writer.execute(insert, &[&g, &(now_us() as i64)]).await.unwrap() });
                sent += 1;
                row += 1;
            }
            futures_util::future::join_all(batch).await;
        }
        let insert_secs = t0.elapsed().as_secs_f64();
        let step_end = now_us();
        // Receivers of row r: the subscribers of its group.
        let expected: u64 = (0..o.subscribers).map(|i| per_group[i % GROUPS as usize]).sum();
        // Drain: until everything arrived, or nothing arrived for 5 s (30 s at most).
        let mut last = (shared.delivered.load(Ordering::SeqCst), Instant::now());
        let drain_start = Instant::now();
        loop {
            let n = shared.delivered.load(Ordering::SeqCst);
            if n >= expected
                || last.1.elapsed() > Duration::from_secs(5)
                || drain_start.elapsed() > Duration::from_secs(30)
            {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = shared.delivered.load(Ordering::SeqCst);
        any |= n > 0;
        // CPU the server and its backends spent (robust to a busy machine, unlike rates).
        let cpu: f64 = pids.iter().zip(&cpu0).map(|(&p, c0)| cpu_secs(p) - c0).sum();
        let cpu_us_per_msg = if n > 0 { (cpu * 1e6 / n as f64).round() } else { 0.0 };
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for x in shared.histograms.lock().unwrap().iter() {
            h.add(&*x.lock().unwrap()).unwrap();
        }
        let span = (shared.last_us.load(Ordering::SeqCst).max(step_end) - step_start) as f64 / 1e6;
        let delivered_per_s = (n as f64 / span).round();
        let inserts_per_s = (sent as f64 / insert_secs).round();
        let (p50, p99) = (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        );
        println!(
            "{rate:>10} {inserts_per_s:>10} {sent:>8} {n:>12} {delivered_per_s:>14} {p50:>9.1} {p99:>9.1} {cpu:>8.2} {cpu_us_per_msg:>10}{}",
            if n < expected {
                format!("  (expected {expected}: fell behind)")
            } else {
                String::new()
            }
        );
        steps.push(
            json!({"rate": rate, "inserts_per_s": inserts_per_s, "rows": sent, "delivered": n,
            "expected": expected, "delivered_per_s": delivered_per_s, "p50_ms": p50, "p99_ms": p99}),
        );
        if n < expected || p99 > 2000.0 {
            break;
        }
    }
    let best = steps.iter().filter(|r| r["delivered"] == r["expected"]).max_by(|a, b| {
        a["delivered_per_s"]
            .as_f64()
            .partial_cmp(&b["delivered_per_s"].as_f64())
            .unwrap()
    });
    let record = match best {
        Some(b) => {
            println!(
                "summary [{}]: {} delivered msgs/s for {} distinct users (p50 {} ms, p99 {} ms) at {} inserts/s",
                mode.name(),
                b["delivered_per_s"],
                o.subscribers,
                b["p50_ms"],
                b["p99_ms"],
                b["inserts_per_s"]
            );
            json!({"scenario": "postgres_changes", "rls": mode.name(), "subscribers": o.subscribers,
                "groups": GROUPS, "inserts_per_s": b["inserts_per_s"], "delivered_per_s": b["delivered_per_s"],
                "p50_ms": b["p50_ms"], "p99_ms": b["p99_ms"], "smoke": o.smoke, "steps": steps})
        }
        None => {
            println!("summary [{}]: no step delivered everything", mode.name());
            json!({"scenario": "postgres_changes", "rls": mode.name(), "subscribers": o.subscribers,
                "groups": GROUPS, "inserts_per_s": null, "delivered_per_s": null, "p50_ms": null,
                "p99_ms": null, "smoke": o.smoke, "steps": steps})
        }
    };
    println!("{record}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        if !path.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("BENCH_RESULTS={path}: {e}"));
            writeln!(f, "{record}").unwrap();
        }
    }
    for h in handles {
        h.abort();
    }
    let _ = server.kill().await;
    let _ = server.wait().await;
    // Free the slot's WAL for the next mode (its walsender may take a moment to exit).
    for _ in 0..50 {
        let r = admin
            .execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
                &[&format!("bench_{}", mode.name())],
            )
            .await;
        if matches!(r, Ok(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    any
}
