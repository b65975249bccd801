//! Scenario 3 — a peer: Sockudo (Rust, Pusher protocol) with the same fan-out workload.
//!
//! Sockudo is installed from crates.io into a cache directory (not in CI):
//! `cargo install sockudo --locked --no-default-features --features local --root <cache>`
//! (`SOCKUDO_BIN` skips the install; `SOCKUDO_FEATURES` overrides the feature flags).
//! It runs with one app from `SOCKUDO_DEFAULT_APP_*`, client messages enabled, its rate
//! limiters and metrics off and connection caps lifted.
//!
//! Workload through Pusher's cheapest client path, the analogue of a Realtime client
//! broadcast: every socket subscribes to `private-bench-<i>` (HMAC-signed auth computed by
//! the generator, as an auth endpoint would), the publisher sends client events
//! `client-m` with the same `{"_s":…,"_t":…}` payload; Sockudo forwards them to every
//! other subscriber, as realtime-rs does for `self: false` broadcasts. (Its HTTP publish
//! API would cost one signed HTTP request per message.)
//!
//! One run measures realtime-rs (vsn 2.0.0) and Sockudo and reports the ratio.
//!
//! `cargo bench --bench sockudo -- [fanout flags] [--cache-dir DIR]`

#[path = "loadgen/mod.rs"]
mod loadgen;

use std::path::PathBuf;
use std::time::Duration;

use loadgen::{Fanout, Params, Proto, Res, Vsn};
use serde_json::json;
use tokio::process::Command;

const APP_KEY: &str = "bench-key";
const APP_SECRET: &str = "bench-secret";

/// Finds or installs the sockudo binary; `Err(reason)` when it cannot be had.
async fn sockudo_bin(p: &Params) -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("SOCKUDO_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cache = p
        .raw("cache-dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-cache/sockudo"));
    let bin = cache.join("bin/sockudo");
    if bin.exists() {
        return Ok(bin);
    }
    let features = std::env::var("SOCKUDO_FEATURES").unwrap_or_else(|_| "local".into());
    println!(
        "sockudo: installing from crates.io into {} (features {features}; takes a while)",
        cache.display()
    );
    let log = cache.with_extension("install.log");
    let _ = std::fs::create_dir_all(&cache);
    let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "sockudo",
            "--locked",
            "--no-default-features",
            "--features",
            &features,
            "--root",
        ])
        .arg(&cache)
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .status()
        .await
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() || !bin.exists() {
        let tail: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("error"))
            .take(5)
            .map(str::to_owned)
            .collect();
        return Err(format!(
            "cargo install sockudo failed ({status}); see {}: {}",
            log.display(),
            tail.join(" | ")
        ));
    }
    Ok(bin)
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_sockudo(bin: &PathBuf) -> Res<loadgen::Server> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("SOCKUDO_DEFAULT_APP_ID", "bench")
        .env("SOCKUDO_DEFAULT_APP_KEY", APP_KEY)
        .env("SOCKUDO_DEFAULT_APP_SECRET", APP_SECRET)
        .env("SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true")
        .env("SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND", "0")
        .env("SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS", "1000000")
        .env("SOCKUDO_MAX_CONNECTIONS", "1000000")
        .env("RATE_LIMITER_ENABLED", "false")
        .env("METRICS_ENABLED", "false")
        .env("DEBUG_MODE", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| loadgen::err(format!("start sockudo: {e}")))?;
    let pid = child.id().unwrap_or(0);
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(loadgen::err(format!("sockudo exited: {status}")));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(loadgen::Server { child, port, pid });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(loadgen::err("sockudo did not listen within 30 s"))
}

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let _ = loadgen::raise_nofile();
    let w = Fanout::from_params(&p, 1, 1000)?;
    let bin = match sockudo_bin(&p).await {
        Ok(b) => b,
        Err(reason) => {
            loadgen::report(
                &format!("sockudo: skipped — {reason}"),
                json!({"scenario": "sockudo", "skipped": reason}),
            )?;
            return Ok(());
        }
    };
    println!(
        "sockudo: {} — realtime-rs vsn 2.0.0, then Sockudo ({}), same workload",
        w.describe(),
        bin.display()
    );

    let server = loadgen::start_realtime(&[]).await?;
    let proto = Proto::Phoenix {
        vsn: Vsn::V2,
        key: loadgen::anon_key()?,
    };
    let rt = loadgen::run_fanout(&proto, server.port, server.pid, &w, true).await?;
    println!("{}", rt.summary(&w));
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sk = start_sockudo(&bin).await?;
    let proto = Proto::Pusher {
        key: APP_KEY.into(),
        secret: APP_SECRET.into(),
    };
    let sr = loadgen::run_fanout(&proto, sk.port, sk.pid, &w, true).await?;
    println!("{}", sr.summary(&w));
    sk.stop().await;

    let loadgen::Comparison {
        summary,
        ratio,
        cpu_ratio,
    } = loadgen::compare(&rt, &sr, "sockudo", &w);
    let record = json!({
        "cpu_efficiency_ratio": cpu_ratio,
        "scenario": "sockudo",
        "topics": w.topics,
        "subscribers_per_topic": w.subscribers,
        "ratio": ratio,
        "deliveries_per_s": rt.best().map(|s| s.deliveries_per_s.round()),
        "p99_ms": rt.best().map(|s| s.p99_ms),
        "sockudo_deliveries_per_s": sr.best().map(|s| s.deliveries_per_s.round()),
        "sockudo_p50_ms": sr.best().map(|s| s.p50_ms),
        "sockudo_p99_ms": sr.best().map(|s| s.p99_ms),
        "errors": rt.errors + sr.errors,
        "realtime": rt.json(),
        "sockudo": sr.json(),
    });
    loadgen::report(&summary, record)?;
    Ok(())
}
