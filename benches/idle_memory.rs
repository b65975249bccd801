//! Scenario 4 — idle memory: N idle connections, each joined to one channel, held by
//! Phoenix heartbeats every 25 s (as supabase-js does; server timeouts at their defaults).
//! Reports the server's RSS growth per connection: (VmRSS after − VmRSS before) ÷ N.
//!
//! Client sockets are bound to 127.10.x.y source addresses (1,000 per address) so tens of
//! thousands of connections do not exhaust one address's ephemeral ports. The fd limit is
//! raised to the hard limit; when that is too low for N (server and generator each need
//! N fds) the run records `"skipped"` with the reason instead of failing.
//!
//! `cargo bench --bench idle_memory -- [--connections 10000,50000] [--topics T (default:
//!  one per connection)] [--vsn 2.0.0|1.0.0] [--parallel 128] [--settle-secs 3]
//!  [--hold-secs 0]`

#[path = "loadgen/mod.rs"]
mod loadgen;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::{Params, Res, Vsn};
use serde_json::json;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let nofile = loadgen::raise_nofile();
    let counts = p.list::<usize>("connections")?.unwrap_or_else(|| vec![10_000, 50_000]);
    let mut failed = false;
    for n in counts {
        if !run(&p, n, nofile).await? {
            failed = true;
        }
    }
    if failed {
        return Err(loadgen::err("idle connections were lost or nothing was measured"));
    }
    Ok(())
}

/// One measurement; `Ok(false)` when the harness saw a failure (lost connections).
async fn run(p: &Params, n: usize, nofile: u64) -> Res<bool> {
    let vsn: Vsn = p.get("vsn", Vsn::V2)?;
    let topics: usize = p.get("topics", 0usize)?;
    let topics = if topics == 0 { n } else { topics };
    let parallel: usize = p.get("parallel", 128usize)?;
    let settle: f64 = p.get("settle-secs", 3.0)?;
    let hold: f64 = p.get("hold-secs", 0.0)?;
    let needed = n as u64 + 256;
    if nofile < needed {
        let reason = format!(
            "fd limit {nofile} < {needed} needed per process (server and generator each hold {n} sockets); raise the hard limit (ulimit -Hn) to run it"
        );
        loadgen::report(
            &format!("idle_memory {n}: skipped — {reason}"),
            json!({"scenario": "idle_memory", "connections": n, "skipped": reason}),
        )?;
        return Ok(true);
    }

    // `--cluster`: the node runs with CLUSTER_URL on a redis-server of its own, each
    // joined topic then being an engine subscription too.
    let redis = if p.flag("cluster") {
        Some(loadgen::start_redis().await?)
    } else {
        None
    };
    let url = redis.as_ref().map(|(_, port)| format!("redis://127.0.0.1:{port}"));
    let mut env = vec![("IDLE_TIMEOUT_MS", "60000"), ("PING_INTERVAL_MS", "15000")];
    if let Some(url) = &url {
        env.push(("CLUSTER_URL", url));
    }
    let server = loadgen::start_realtime(&env).await?;
    let key = loadgen::anon_key()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kb();
    let gen_before = loadgen::rss_kb(std::process::id());
    println!(
        "idle_memory: {n} connections over {topics} topic(s), vsn {}, server pid {} RSS {before} KB",
        vsn.as_str(),
        server.pid
    );

    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set: JoinSet<Res<()>> = JoinSet::new();
    let (mut next, mut done, mut errors) = (0usize, 0usize, 0usize);
    let mut first_error = None;
    while done < n {
        while next < n && set.len() < parallel {
            let (key, stop, closed, i) = (key.clone(), stop.clone(), closed.clone(), next);
            let port = server.port;
            set.spawn(async move {
                let mut ws =
                    loadgen::ws_connect(port, &loadgen::phoenix_path(&key, vsn), Some(loadgen::spread_addr(i))).await?;
                let topic = format!("realtime:idle-{}", i % topics);
                loadgen::phoenix_join(&mut ws, vsn, "1", &topic, &loadgen::join_config(None)).await?;
                hold_open(ws, vsn, stop, closed);
                Ok(())
            });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => break,
        }
        done += 1;
        if done % 10_000 == 0 {
            println!("  {done} joined ({:.1} s)", started.elapsed().as_secs_f64());
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let after = server.rss_kb();
    let held = n - errors;
    let per_conn = if held > 0 {
        after.saturating_sub(before) as f64 / held as f64
    } else {
        0.0
    };
    let mut after_hold = None;
    if hold > 0.0 {
        println!("  holding {hold} s (heartbeats every 25 s)");
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
        after_hold = Some(server.rss_kb());
    }
    let lost = closed.load(Ordering::Relaxed);
    let gen_after = loadgen::rss_kb(std::process::id());
    let summary = format!(
        "idle_memory {n}: {per_conn:.2} KB server RSS per idle joined connection ({before} → {after} KB, {held} held, {lost} lost, {errors} failed to join; joined in {connect_secs:.1} s)"
    );
    let record = json!({
        "scenario": "idle_memory",
        "connections": n,
        "topics": topics,
        "vsn": vsn.as_str(),
        "kb_per_connection": (per_conn * 100.0).round() / 100.0,
        "server_rss_kb_before": before,
        "server_rss_kb_after": after,
        "server_rss_kb_after_hold": after_hold,
        "hold_secs": hold,
        "held": held,
        "lost": lost,
        "errors": errors,
        "first_error": first_error,
        "connect_secs": connect_secs,
        "generator_rss_kb": gen_after.saturating_sub(gen_before),
    });
    loadgen::report(&summary, record)?;
    stop.store(true, Ordering::Relaxed);
    server.stop().await;
    // Let the closed sockets' tasks end before the next size.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(errors == 0 && lost == 0 && held > 0)
}

/// Keeps a joined socket open: answers pings, heartbeats every 25 s, counts closes.
fn hold_open(ws: loadgen::Ws, vsn: Vsn, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let (mut reader, writer) = loadgen::split(ws);
        loadgen::spawn_heartbeats(writer.clone(), vsn, Duration::from_secs(25), stop.clone());
        loop {
            match loadgen::next_frame(&mut reader, &writer).await {
                Ok(Some(_)) => continue,
                _ => {
                    if !stop.load(Ordering::Relaxed) {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
}
