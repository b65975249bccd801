//! Scenario 5 — presence convergence.
//!
//! N clients (default 1,000) are connected first; then all join one topic with presence
//! enabled (key `k<i>`) and track `{"n":0}` as soon as their join is acknowledged. Each
//! client applies `presence_state` / `presence_diff` as realtime-js does (diffs held until
//! the state arrived; joins merged by `phx_ref`, leaves remove by `phx_ref`). Measured:
//! time until every client's state holds N keys, each with its one `n = 0` meta; then
//! every client re-tracks `{"n":1}` at once and the time until every client sees N keys
//! with `n = 1` (and no stale meta).
//!
//! With `--nodes K` (K ≥ 2) the same run goes to a cluster: an engine (`--engine redis`
//! or `nats`) and K nodes, the clients spread over them round robin, so every view is
//! converged only once presence has crossed the engine (issue 11: ≤ 2 s for 1,000 over 3).
//!
//! The nodes of a cluster share the machine's cores, so each runs `--node-workers`
//! runtime threads (`WORKER_THREADS`, default 1), as in `cluster_fanout`.
//!
//! `cargo bench --bench presence -- [--clients N] [--vsn 2.0.0|1.0.0] [--timeout-secs 60]
//! [--nodes K --engine redis|nats --node-workers W]`

#[path = "loadgen/mod.rs"]
mod loadgen;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::OpCode;
use loadgen::{Params, Res, Vsn};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

const TOPIC: &str = "realtime:presence-bench";

/// Presence payloads, parsed borrowed and typed (keys other than `phx_ref`/`n` skipped):
/// the generator must not be what limits the run.
#[derive(Deserialize)]
struct MetaIn<'a> {
    #[serde(borrow)]
    phx_ref: &'a str,
    #[serde(default)]
    n: Option<i64>,
}

#[derive(Deserialize)]
struct MetasIn<'a> {
    #[serde(borrow)]
    metas: Vec<MetaIn<'a>>,
}

type PresencesIn<'a> = HashMap<&'a str, MetasIn<'a>>;

#[derive(Deserialize)]
struct DiffIn<'a> {
    #[serde(borrow, default)]
    joins: PresencesIn<'a>,
    #[serde(borrow, default)]
    leaves: PresencesIn<'a>,
}

/// A V1 message (V2 is `[join_ref, ref, topic, event, payload]`).
#[derive(Deserialize)]
struct V1In<'a> {
    #[serde(rename = "ref", borrow, default)]
    ref_: Option<&'a str>,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct ReplyIn<'a> {
    #[serde(borrow)]
    status: &'a str,
}

type V2In<'a> = (Option<&'a str>, Option<&'a str>, &'a str, &'a str, &'a RawValue);

/// `(ref, event, payload)` of a Phoenix text frame.
fn envelope(vsn: Vsn, data: &[u8]) -> Option<(Option<&str>, &str, &RawValue)> {
    match vsn {
        Vsn::V2 => {
            let (_, r, _, e, p): V2In = serde_json::from_slice(data).ok()?;
            Some((r, e, p))
        }
        Vsn::V1 => {
            let m: V1In = serde_json::from_slice(data).ok()?;
            Some((m.ref_, m.event, m.payload))
        }
    }
}

fn metas(m: &MetasIn) -> Vec<(String, i64)> {
    m.metas
        .iter()
        .map(|x| (x.phx_ref.to_owned(), x.n.unwrap_or(-1)))
        .collect()
}

/// A client's view: key → metas as (phx_ref, n).
struct View {
    keys: HashMap<String, Vec<(String, i64)>>,
    /// Keys whose only meta has `n == target`.
    done: usize,
    target: i64,
    synced: bool,
    /// Diffs received before the state (raw JSON), applied after it as realtime-js does.
    pending: Vec<String>,
}

impl View {
    fn key_done(&self, key: &str) -> bool {
        matches!(self.keys.get(key).map(Vec::as_slice), Some([(_, n)]) if *n == self.target)
    }

    fn set_target(&mut self, target: i64) {
        self.target = target;
        self.done = self.keys.keys().filter(|k| self.key_done(k)).count();
    }

    /// phx-js `syncState` on a fresh view (the state replaces), then the held diffs.
    fn state(&mut self, raw: &RawValue) -> Res<()> {
        let state: PresencesIn = serde_json::from_str(raw.get())?;
        self.keys = state.iter().map(|(k, m)| ((*k).to_owned(), metas(m))).collect();
        self.synced = true;
        self.set_target(self.target);
        for d in std::mem::take(&mut self.pending) {
            let diff: DiffIn = serde_json::from_str(&d)?;
            self.diff(&diff);
        }
        Ok(())
    }

    fn diff_raw(&mut self, raw: &RawValue) -> Res<()> {
        if !self.synced {
            self.pending.push(raw.get().to_owned());
            return Ok(());
        }
        let diff: DiffIn = serde_json::from_str(raw.get())?;
        self.diff(&diff);
        Ok(())
    }

    /// phx-js `syncDiff`: joins first (new metas, plus current ones whose ref is not
    /// joined, in front), then leaves (remove metas by ref, drop empty keys).
    fn diff(&mut self, diff: &DiffIn) {
        for (k, m) in &diff.joins {
            let was = self.key_done(k);
            let entry = self.keys.entry((*k).to_owned()).or_default();
            entry.retain(|(r, _)| !m.metas.iter().any(|x| x.phx_ref == r));
            entry.extend(metas(m));
            self.adjust(k, was);
        }
        for (k, m) in &diff.leaves {
            let was = self.key_done(k);
            if let Some(entry) = self.keys.get_mut(*k) {
                entry.retain(|(r, _)| !m.metas.iter().any(|x| x.phx_ref == r));
                if entry.is_empty() {
                    self.keys.remove(*k);
                }
            }
            self.adjust(k, was);
        }
    }

    fn adjust(&mut self, key: &str, was: bool) {
        match (was, self.key_done(key)) {
            (false, true) => self.done += 1,
            (true, false) => self.done -= 1,
            _ => {}
        }
    }
}

struct Shared {
    n: usize,
    /// Clients that reached each phase's target.
    converged: [AtomicUsize; 2],
    notify: Notify,
    frames: AtomicU64,
    errors: AtomicU64,
    /// Set once measured: sockets closing after that are not errors.
    finished: AtomicBool,
}

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let _ = loadgen::raise_nofile();
    let n: usize = p.get("clients", 1000usize)?;
    let vsn: Vsn = p.get("vsn", Vsn::V2)?;
    let timeout = Duration::from_secs_f64(p.get("timeout-secs", 60.0)?);
    let nodes_wanted: usize = p.get("nodes", 1usize)?;
    let engine_name: String = p.get("engine", "redis".to_owned())?;
    let (engine, servers) = if nodes_wanted > 1 {
        let (engine, url) = loadgen::start_engine_named(&engine_name).await?;
        let workers = p.get("node-workers", 1usize)?.to_string();
        let mut servers = Vec::new();
        for i in 0..nodes_wanted {
            let name = format!("node-{}", i + 1);
            let env = [
                ("CLUSTER_URL", url.as_str()),
                ("NODE_ID", &name),
                ("WORKER_THREADS", &workers),
            ];
            servers.push(loadgen::start_realtime(&env).await?);
        }
        // Let the nodes hear each other before anyone joins.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (Some(engine), servers)
    } else {
        (None, vec![loadgen::start_realtime(&[]).await?])
    };
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let key = loadgen::anon_key()?;
    let layout = match engine {
        Some(_) => format!("{} nodes on {engine_name}", servers.len()),
        None => "one node".to_owned(),
    };
    println!(
        "presence: {n} clients on one topic, vsn {}, {layout}, server pids {pids:?}",
        vsn.as_str(),
    );
    let server_cpu = || pids.iter().map(|p| loadgen::cpu_secs(*p)).sum::<f64>();
    let server_rss = || pids.iter().map(|p| loadgen::rss_kb(*p)).sum::<u64>();

    // Connect everyone first (not timed).
    let mut set: JoinSet<Res<(usize, loadgen::Ws)>> = JoinSet::new();
    let mut sockets = Vec::with_capacity(n);
    let mut next = 0;
    while sockets.len() < n {
        while next < n && set.len() < 64 {
            let (key, i, port) = (key.clone(), next, ports[next % ports.len()]);
            set.spawn(async move {
                Ok((
                    i,
                    loadgen::ws_connect(port, &loadgen::phoenix_path(&key, vsn), None).await?,
                ))
            });
            next += 1;
        }
        match set.join_next().await {
            Some(r) => sockets.push(r??),
            None => break,
        }
    }
    let rss_connected = server_rss();

    let shared = Arc::new(Shared {
        n,
        converged: [AtomicUsize::new(0), AtomicUsize::new(0)],
        notify: Notify::new(),
        frames: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        finished: AtomicBool::new(false),
    });
    let (phase_tx, phase_rx) = watch::channel(0i64);
    let me = std::process::id();
    let cpu0 = (server_cpu(), loadgen::cpu_secs(me));
    let t0 = Instant::now();
    for (i, ws) in sockets {
        tokio::spawn(client(i, ws, vsn, shared.clone(), phase_rx.clone()));
    }
    let join_secs = wait_phase(&shared, 0, t0, timeout).await;
    let frames_join = shared.frames.load(Ordering::Relaxed);
    let cpu1 = (server_cpu(), loadgen::cpu_secs(me));
    let t1 = Instant::now();
    let _ = phase_tx.send(1);
    let update_secs = if join_secs.is_some() {
        wait_phase(&shared, 1, t1, timeout).await
    } else {
        None
    };
    let frames_total = shared.frames.load(Ordering::Relaxed);
    let cpu2 = (server_cpu(), loadgen::cpu_secs(me));
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let rss_after = server_rss();
    let errors = shared.errors.load(Ordering::Relaxed);
    let fmt = |s: Option<f64>, phase: usize| match s {
        Some(s) => format!("{s:.3} s"),
        None => format!(
            "not within {:.0} s ({} of {n} clients converged)",
            timeout.as_secs_f64(),
            shared.converged[phase].load(Ordering::Relaxed)
        ),
    };
    let summary = format!(
        "presence {n} ({layout}): all clients hold {n} keys after {}; {n} simultaneous updates seen by all after {}; {} frames received, {errors} errors (CPU s server/generator: join {:.1}/{:.1}, update {:.1}/{:.1})",
        fmt(join_secs, 0),
        fmt(update_secs, 1),
        frames_total,
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
        cpu2.0 - cpu1.0,
        cpu2.1 - cpu1.1
    );
    let record = json!({
        "scenario": "presence",
        "clients": n,
        "nodes": servers.len(),
        "engine": engine.as_ref().map(|_| engine_name.as_str()),
        "vsn": vsn.as_str(),
        "join_converge_s": join_secs,
        "update_converge_s": update_secs,
        "frames_join_phase": frames_join,
        "frames_update_phase": frames_total - frames_join,
        "server_cpu_s_join": r2(cpu1.0 - cpu0.0),
        "generator_cpu_s_join": r2(cpu1.1 - cpu0.1),
        "server_cpu_s_update": r2(cpu2.0 - cpu1.0),
        "generator_cpu_s_update": r2(cpu2.1 - cpu1.1),
        "server_rss_kb_connected": rss_connected,
        "server_rss_kb_after": rss_after,
        "errors": errors,
    });
    shared.finished.store(true, Ordering::Relaxed);
    loadgen::report(&summary, record)?;
    for server in servers {
        server.stop().await;
    }
    drop(engine);
    if join_secs.is_none() || update_secs.is_none() || errors > 0 {
        return Err(loadgen::err("presence did not converge"));
    }
    Ok(())
}

async fn wait_phase(shared: &Shared, phase: usize, t0: Instant, timeout: Duration) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = shared.notify.notified();
        if shared.converged[phase].load(Ordering::Acquire) >= shared.n {
            return Some(t0.elapsed().as_secs_f64());
        }
        if shared.errors.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}

async fn client(i: usize, ws: loadgen::Ws, vsn: Vsn, shared: Arc<Shared>, mut phase: watch::Receiver<i64>) {
    if let Err(e) = run_client(i, ws, vsn, &shared, &mut phase).await {
        if shared.finished.load(Ordering::Relaxed) {
            return;
        }
        if shared.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("presence client {i}: {e}");
        }
        shared.notify.notify_waiters();
    }
}

async fn run_client(i: usize, ws: loadgen::Ws, vsn: Vsn, shared: &Shared, phase: &mut watch::Receiver<i64>) -> Res<()> {
    let (mut reader, writer) = loadgen::split(ws);
    let join_ref = "1";
    let key = format!("k{i}");
    loadgen::send_text(
        &writer,
        loadgen::phoenix_text(
            vsn,
            Some(join_ref),
            Some(join_ref),
            TOPIC,
            "phx_join",
            &loadgen::join_config(Some(&key)),
        ),
    )
    .await?;
    // The phase watcher re-tracks on its own task (read_frame is not cancel safe).
    let tracker = {
        let (writer, mut phase) = (writer.clone(), phase.clone());
        tokio::spawn(async move {
            while phase.changed().await.is_ok() {
                let n = *phase.borrow_and_update();
                let push = loadgen::phoenix_text(
                    vsn,
                    Some(join_ref),
                    Some(&format!("t{n}")),
                    TOPIC,
                    "presence",
                    &json!({"type": "presence", "event": "track", "payload": {"n": n}}),
                );
                if loadgen::send_text(&writer, push).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut view = View {
        keys: HashMap::new(),
        done: 0,
        target: 0,
        synced: false,
        pending: Vec::new(),
    };
    let mut reached = [false, false];
    let result: Res<()> = async {
        loop {
            let Some((op, data)) = loadgen::next_frame(&mut reader, &writer).await? else {
                return Err(loadgen::err("closed by the server"));
            };
            if op != OpCode::Text {
                continue;
            }
            shared.frames.fetch_add(1, Ordering::Relaxed);
            let Some((ref_, event, payload)) = envelope(vsn, &data) else {
                continue;
            };
            let status_ok = || serde_json::from_str::<ReplyIn>(payload.get()).is_ok_and(|r| r.status == "ok");
            match event {
                "phx_reply" if ref_ == Some(join_ref) => {
                    if !status_ok() {
                        return Err(loadgen::err(format!("join refused: {}", payload.get())));
                    }
                    let push = loadgen::phoenix_text(
                        vsn,
                        Some(join_ref),
                        Some("t0"),
                        TOPIC,
                        "presence",
                        &json!({"type": "presence", "event": "track", "payload": {"n": 0}}),
                    );
                    loadgen::send_text(&writer, push).await?;
                }
                "phx_reply" if !status_ok() => {
                    return Err(loadgen::err(format!("push refused: {}", payload.get())));
                }
                "presence_state" => view.state(payload)?,
                "presence_diff" => view.diff_raw(payload)?,
                "phx_error" | "phx_close" => return Err(loadgen::err(format!("{event}: {}", payload.get()))),
                _ => {}
            }
            let target = *phase.borrow();
            if view.target != target {
                view.set_target(target);
            }
            let ph = target as usize;
            if ph < 2 && !reached[ph] && view.done == shared.n && view.keys.len() == shared.n {
                reached[ph] = true;
                if shared.converged[ph].fetch_add(1, Ordering::AcqRel) + 1 == shared.n {
                    shared.notify.notify_waiters();
                }
            }
        }
    }
    .await;
    tracker.abort();
    result
}
