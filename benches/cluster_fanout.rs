//! Scenario 7 — cross-node fan-out through a cluster (issue 11).
//!
//! A `redis-server` and three `realtime` nodes with `CLUSTER_URL`; the publisher on node 1,
//! the subscribers split over nodes 2 and 3 (so every delivery crosses Redis), rising
//! rate as in `fanout`. Then the same workload on one node without a cluster. Reports the
//! max deliveries/s at p99 ≤ 25 ms of both and cluster ÷ single node, deliveries per
//! server CPU-second (the nodes' CPU summed), and Redis' own CPU seconds per run.
//!
//! With `--replay-public` the second run is the same cluster with `REPLAY_PUBLIC=true`
//! instead of one node (every message then also goes into its topic's Redis stream, in
//! the same pipeline as its PUBLISH), and the ratio is replay on ÷ off.
//!
//! Three nodes share the machine's two cores with Redis and the generator, so each node
//! runs `--node-workers` runtime threads (`WORKER_THREADS`, default 1): three nodes of two
//! threads each (one per core, the server's default) outnumber the cores, and the
//! scheduler's time slices then show in p99 (measured: 0.33–0.64 × one node with 2, 0.80
//! with 1). The single node keeps its default, one thread per core.
//!
//! `cargo bench --bench cluster_fanout -- [--replay-public] [--node-workers N] [fanout
//!  flags: --topics --subscribers --step-secs --start-rate --growth --max-rate --rates …]`;
//! `REDIS_SERVER` names the binary (default `redis-server`).

#[path = "loadgen/mod.rs"]
mod loadgen;

use loadgen::{Fanout, FanoutResult, Params, Proto, Res, Target, Vsn};
use serde_json::json;

/// A cluster of three nodes on a fresh Redis, each with `workers` runtime threads and
/// `env`: the run and Redis' CPU seconds during it.
async fn run_cluster(proto: &Proto, w: &Fanout, workers: &str, env: &[(&str, &str)]) -> Res<(FanoutResult, f64)> {
    let (redis, redis_port) = loadgen::start_redis().await?;
    let redis_pid = redis.id().unwrap_or(0);
    let url = format!("redis://127.0.0.1:{redis_port}");
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        let mut node_env = vec![
            ("CLUSTER_URL", url.as_str()),
            ("NODE_ID", name),
            ("WORKER_THREADS", workers),
        ];
        node_env.extend_from_slice(env);
        nodes.push(loadgen::start_realtime(&node_env).await?);
    }
    // Let the nodes hear each other before joining.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let target = Target {
        publisher_port: nodes[0].port,
        subscriber_ports: vec![nodes[1].port, nodes[2].port],
        pids: nodes.iter().map(|n| n.pid).collect(),
    };
    let redis_cpu0 = loadgen::cpu_secs(redis_pid);
    let run = loadgen::run_fanout_on(proto, &target, w, true).await?;
    let redis_cpu = loadgen::cpu_secs(redis_pid) - redis_cpu0;
    println!("{} (Redis CPU {redis_cpu:.1} s)", run.summary(w));
    for n in nodes {
        n.stop().await;
    }
    drop(redis);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    Ok((run, redis_cpu))
}

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let _ = loadgen::raise_nofile();
    let w = Fanout::from_params(&p, 1, 1000)?;
    let proto = Proto::Phoenix {
        vsn: Vsn::V2,
        key: loadgen::anon_key()?,
    };
    let workers = p.get("node-workers", 1usize)?.to_string();
    if p.flag("replay-public") {
        return replay_public(&proto, &w, &workers).await;
    }
    println!(
        "cluster_fanout: {} — publisher on node 1, subscribers on nodes 2 and 3 through Redis, {workers} runtime thread(s) per node; then one node",
        w.describe()
    );

    let (cluster, redis_cpu) = run_cluster(&proto, &w, &workers, &[]).await?;
    let single = loadgen::start_realtime(&[]).await?;
    let one = loadgen::run_fanout(&proto, single.port, single.pid, &w, true).await?;
    println!("{}", one.summary(&w));
    single.stop().await;

    let loadgen::Comparison {
        summary,
        ratio,
        cpu_ratio,
    } = loadgen::compare(&cluster, &one, "one node", &w);
    let summary = format!("cluster of 3 {summary}; Redis CPU {redis_cpu:.1} s");
    let record = json!({
        "scenario": "cluster_fanout",
        "topics": w.topics,
        "subscribers_per_topic": w.subscribers,
        "ratio": ratio,
        "cpu_efficiency_ratio": cpu_ratio,
        "redis_cpu_s": redis_cpu,
        "node_workers": workers,
        "deliveries_per_s": cluster.best().map(|s| s.deliveries_per_s.round()),
        "p50_ms": cluster.best().map(|s| s.p50_ms),
        "p99_ms": cluster.best().map(|s| s.p99_ms),
        "single_deliveries_per_s": one.best().map(|s| s.deliveries_per_s.round()),
        "errors": cluster.errors + one.errors,
        "cluster": cluster.json(),
        "single": one.json(),
    });
    loadgen::report(&summary, record)?;
    if cluster.total_delivered() == 0 || one.total_delivered() == 0 || cluster.errors + one.errors > 0 {
        return Err(loadgen::err("harness failure: nothing delivered or subscribers lost"));
    }
    Ok(())
}

/// `--replay-public`: the cluster without, then with `REPLAY_PUBLIC`.
async fn replay_public(proto: &Proto, w: &Fanout, workers: &str) -> Res<()> {
    println!(
        "cluster_fanout --replay-public: {} — publisher on node 1, subscribers on nodes 2 and 3 through Redis; REPLAY_PUBLIC off, then on",
        w.describe()
    );
    let (off, off_cpu) = run_cluster(proto, w, workers, &[]).await?;
    let (on, on_cpu) = run_cluster(proto, w, workers, &[("REPLAY_PUBLIC", "true")]).await?;
    let loadgen::Comparison {
        summary,
        ratio,
        cpu_ratio,
    } = loadgen::compare(&on, &off, "REPLAY_PUBLIC off", w);
    let summary = format!("cluster of 3 with REPLAY_PUBLIC {summary}; Redis CPU {on_cpu:.1} s on, {off_cpu:.1} s off");
    let record = json!({
        "scenario": "cluster_fanout_replay_public",
        "topics": w.topics,
        "subscribers_per_topic": w.subscribers,
        "ratio": ratio,
        "cpu_efficiency_ratio": cpu_ratio,
        "redis_cpu_s": on_cpu,
        "redis_cpu_off_s": off_cpu,
        "deliveries_per_s": on.best().map(|s| s.deliveries_per_s.round()),
        "p99_ms": on.best().map(|s| s.p99_ms),
        "off_deliveries_per_s": off.best().map(|s| s.deliveries_per_s.round()),
        "errors": on.errors + off.errors,
        "replay_on": on.json(),
        "replay_off": off.json(),
    });
    loadgen::report(&summary, record)?;
    if on.total_delivered() == 0 || off.total_delivered() == 0 || on.errors + off.errors > 0 {
        return Err(loadgen::err("harness failure: nothing delivered or subscribers lost"));
    }
    Ok(())
}
