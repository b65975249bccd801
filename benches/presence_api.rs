//! Scenario 8 — the presence API under a large roster (issue 13).
//!
//! One topic gets N online presence entries (default 10,000), tracked as server-set entries
//! through `POST /api/channels/:topic/presence` (setting them up over sockets would send
//! N² diff frames to the members, which is not what is measured; the GET renders the
//! same CRDT either way), plus N/10 more that are deleted again so `last_seen` has work
//! to do too. Then `GET /api/channels/:topic/presence` is timed R times (default 200),
//! one request at a time, each on a fresh loopback connection, from write to the last
//! byte read, alternately on a quiet roster and right after one entry changed (every
//! GET then renders the whole roster again). Target: p99 ≤ 10 ms with the roster changing.
//!
//! `cargo bench --bench presence_api -- [--entries N] [--requests R]`

#[path = "loadgen/mod.rs"]
mod loadgen;

use std::time::{Duration, Instant};

use loadgen::{Params, Res};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "presence-api-bench";

/// One HTTP/1.1 request on a fresh connection; status and body.
async fn request(port: u16, method: &str, path: &str, key: &str, body: &str) -> Res<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::with_capacity(1 << 21);
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| loadgen::err("no HTTP head"))?;
    let status = std::str::from_utf8(&raw[9..12])?.parse()?;
    Ok((status, raw[split + 4..].to_vec()))
}

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let n: usize = p.get("entries", 10_000usize)?;
    let requests: usize = p.get("requests", 200usize)?;
    let left = n / 10;
    let max = (n + left).to_string();
    let server = loadgen::start_realtime(&[
        ("PRESENCE_SERVER_MAX_PER_TOPIC", &max),
        ("MAX_PRESENCE_EVENTS_PER_SECOND", "10000000"),
    ])
    .await?;
    let key = realtime::auth::sign_hs256(
        loadgen::SECRET,
        &json!({"role": "service_role", "exp": 4_000_000_000u64}),
    )
    .map_err(|e| loadgen::err(format!("sign: {e}")))?;
    println!("presence_api: {n} entries on one topic, server pid {}", server.pid);

    let path = format!("/api/channels/{TOPIC}/presence");
    let setup = Instant::now();
    for i in 0..n + left {
        let body = json!({"key": format!("supplier-{i}"), "meta": {"status": "online", "n": i}, "ttl_seconds": 3600})
            .to_string();
        let (status, resp) = request(server.port, "POST", &path, &key, &body).await?;
        if status != 200 {
            return Err(loadgen::err(format!(
                "POST {i}: {status} {}",
                String::from_utf8_lossy(&resp)
            )));
        }
    }
    for i in 0..left {
        let (status, _) = request(server.port, "DELETE", &format!("{path}/supplier-{i}"), &key, "").await?;
        if status != 204 {
            return Err(loadgen::err(format!("DELETE {i}: {status}")));
        }
    }
    println!("setup: {:.1} s", setup.elapsed().as_secs_f64());

    let (status, body) = request(server.port, "GET", &path, &key, "").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let online = v["online"].as_object().map_or(0, |o| o.len());
    let seen = v["last_seen"].as_object().map_or(0, |o| o.len());
    if status != 200 || online != n || seen != left {
        return Err(loadgen::err(format!(
            "GET: {status}, {online} online, {seen} last seen"
        )));
    }
    // Quiet: the roster does not change between GETs. Changing: one entry's meta is
    // replaced (untimed) before each GET, so every GET renders all entries afresh.
    let mut quiet = Vec::with_capacity(requests);
    let mut changing = Vec::with_capacity(requests);
    for r in 0..2 * requests {
        let change = r % 2 == 1;
        if change {
            let body =
                json!({"key": format!("supplier-{left}"), "meta": {"status": "busy", "n": r}, "ttl_seconds": 3600})
                    .to_string();
            let (status, _) = request(server.port, "POST", &path, &key, &body).await?;
            if status != 200 {
                return Err(loadgen::err(format!("POST: {status}")));
            }
        }
        let t = Instant::now();
        let (status, _) = request(server.port, "GET", &path, &key, "").await?;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        if status != 200 {
            return Err(loadgen::err(format!("GET: {status}")));
        }
        if change {
            changing.push(took)
        } else {
            quiet.push(took)
        }
    }
    let stats = |ms: &mut Vec<f64>| {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        (at(0.5), at(0.99), at(1.0))
    };
    let (q50, q99, qmax) = stats(&mut quiet);
    let (c50, c99, cmax) = stats(&mut changing);
    let summary = format!(
        "presence_api {n}: GET /api/channels/:topic/presence ({n} online, {left} last seen, {} KB), {requests} requests each: roster changing before each GET p50 {c50:.2} ms, p99 {c99:.2} ms, max {cmax:.2} ms; quiet roster p50 {q50:.2} ms, p99 {q99:.2} ms, max {qmax:.2} ms",
        body.len() / 1024
    );
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let record = json!({
        "scenario": "presence_api",
        "entries": n,
        "online": n,
        "last_seen": left,
        "body_bytes": body.len(),
        "requests": requests,
        "changing_p50_ms": r2(c50),
        "changing_p99_ms": r2(c99),
        "changing_max_ms": r2(cmax),
        "quiet_p50_ms": r2(q50),
        "quiet_p99_ms": r2(q99),
        "quiet_max_ms": r2(qmax),
    });
    loadgen::report(&summary, record)?;
    server.stop().await;
    if c99 > 10.0 {
        return Err(loadgen::err(format!("p99 {c99:.2} ms over the 10 ms target")));
    }
    Ok(())
}
