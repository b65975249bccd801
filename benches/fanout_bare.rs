//! Scenario 2 — the limit: realtime-rs against a bare fan-out server.
//!
//! The bare server (this binary with `--serve`, a separate process like realtime-rs) is
//! hyper 1 + fastwebsockets with no protocol and no auth: a socket's `?topic=` names its
//! group; every frame a socket sends is encoded once as a server frame and the same bytes
//! are queued to every other socket of the group, each socket's writer draining its queue
//! in one write per wake-up (the same batching realtime-rs does). The generator drives it
//! with exactly the frames it sends realtime-rs (vsn 2.0.0 type-3 user broadcasts; the
//! receivers read the stamp wherever it is in the frame).
//!
//! One run measures realtime-rs, then the bare server, with the same workload, and
//! reports realtime-rs ÷ bare (max deliveries/s at p99 ≤ 25 ms).
//!
//! `cargo bench --bench fanout_bare -- [fanout flags: --topics --subscribers --step-secs
//!  --start-rate --growth --max-rate --rates …]`; `-- --serve` runs the bare server alone.

#[path = "loadgen/mod.rs"]
mod loadgen;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use loadgen::{Fanout, Params, Proto, Res, Vsn};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::mpsc;

type Group = Vec<(u64, mpsc::UnboundedSender<Bytes>)>;

#[derive(Default)]
struct Groups {
    map: Mutex<HashMap<String, Group>>,
    next_id: AtomicU64,
}

async fn serve() -> Res<()> {
    let _ = loadgen::raise_nofile();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("bare-fanout listening on {}", listener.local_addr()?);
    let groups = Arc::new(Groups::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let groups = groups.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| upgrade(req, groups.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    groups: Arc<Groups>,
) -> Result<Response<Empty<Bytes>>, fastwebsockets::WebSocketError> {
    let topic = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("topic=")))
        .unwrap_or("")
        .to_owned();
    let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Ok(ws) = fut.await {
            connection(ws, topic, groups).await;
        }
    });
    Ok(response)
}

async fn connection(ws: loadgen::Ws, topic: String, groups: Arc<Groups>) {
    let id = groups.next_id.fetch_add(1, Ordering::Relaxed);
    let (r, mut w) = tokio::io::split(ws.into_inner());
    let (mut reader, _) = fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    if let Ok(mut map) = groups.map.lock() {
        map.entry(topic.clone()).or_default().push((id, tx));
    }
    // The writer: drain the queue, one write per wake-up.
    let writer = tokio::spawn(async move {
        let mut items = Vec::new();
        let mut buf = Vec::new();
        while rx.recv_many(&mut items, 4096).await > 0 {
            for b in items.drain(..) {
                buf.extend_from_slice(&b);
            }
            if w.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    let mut ignore = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    while let Ok(frame) = reader.read_frame(&mut ignore).await {
        match frame.opcode {
            OpCode::Binary | OpCode::Text => {
                // Encode once; every subscriber gets the same bytes.
                let mut head = [0u8; 14];
                let n = Frame::new(true, frame.opcode, None, Payload::Borrowed(&frame.payload)).fmt_head(&mut head);
                let mut encoded = Vec::with_capacity(n + frame.payload.len());
                encoded.extend_from_slice(&head[..n]);
                encoded.extend_from_slice(&frame.payload);
                let encoded = Bytes::from(encoded);
                if let Ok(map) = groups.map.lock() {
                    for (other, tx) in map.get(&topic).into_iter().flatten() {
                        if *other != id {
                            let _ = tx.send(encoded.clone());
                        }
                    }
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    if let Ok(mut map) = groups.map.lock() {
        if let Some(g) = map.get_mut(&topic) {
            g.retain(|(other, _)| *other != id);
        }
    }
    writer.abort();
}

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    if p.flag("serve") {
        return serve().await;
    }
    let _ = loadgen::raise_nofile();
    let w = Fanout::from_params(&p, 1, 1000)?;
    println!(
        "fanout_bare: {} — realtime-rs vsn 2.0.0, then the bare server, same frames",
        w.describe()
    );

    let server = loadgen::start_realtime(&[]).await?;
    let proto = Proto::Phoenix {
        vsn: Vsn::V2,
        key: loadgen::anon_key()?,
    };
    let rt = loadgen::run_fanout(&proto, server.port, server.pid, &w, true).await?;
    println!("{}", rt.summary(&w));
    server.stop().await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve");
    let bare = loadgen::start_listening(cmd, "bare fan-out server").await?;
    let br = loadgen::run_fanout(&Proto::Bare, bare.port, bare.pid, &w, true).await?;
    println!("{}", br.summary(&w));
    bare.stop().await;

    let loadgen::Comparison {
        summary,
        ratio,
        cpu_ratio,
    } = loadgen::compare(&rt, &br, "bare", &w);
    let record = json!({
        "cpu_efficiency_ratio": cpu_ratio,
        "scenario": "fanout_bare",
        "topics": w.topics,
        "subscribers_per_topic": w.subscribers,
        "ratio": ratio,
        "deliveries_per_s": rt.best().map(|s| s.deliveries_per_s.round()),
        "p50_ms": rt.best().map(|s| s.p50_ms),
        "p99_ms": rt.best().map(|s| s.p99_ms),
        "bare_deliveries_per_s": br.best().map(|s| s.deliveries_per_s.round()),
        "bare_p50_ms": br.best().map(|s| s.p50_ms),
        "bare_p99_ms": br.best().map(|s| s.p99_ms),
        "errors": rt.errors + br.errors,
        "realtime": rt.json(),
        "bare": br.json(),
    });
    loadgen::report(&summary, record)?;
    if rt.total_delivered() == 0 || br.total_delivered() == 0 || rt.errors + br.errors > 0 {
        return Err(loadgen::err("harness failure: nothing delivered or subscribers lost"));
    }
    Ok(())
}
