//! Scenario 7 — cross-node fan-out through a cluster (issue 11).
//!
//! A `redis-server` and three `realtime` nodes with `CLUSTER_URL`; the publisher on node 1,
//! the subscribers split over nodes 2 and 3 (so every delivery crosses Redis), rising
//! rate as in `fanout`. Then the same workload on one node without a cluster. Reports the
//! max deliveries/s at p99 ≤ 25 ms of both and cluster ÷ single node, deliveries per
//! server CPU-second (the nodes' CPU summed), and Redis' own CPU seconds per run.
//!
//! `cargo bench --bench cluster_fanout -- [fanout flags: --topics --subscribers
//!  --step-secs --start-rate --growth --max-rate --rates …]`; `REDIS_SERVER` names the
//! binary (default `redis-server`).

#[path = "loadgen/mod.rs"]
mod loadgen;

use loadgen::{Fanout, Params, Proto, Res, Target, Vsn};
use serde_json::json;

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let _ = loadgen::raise_nofile();
    let w = Fanout::from_params(&p, 1, 1000)?;
    let proto = Proto::Phoenix {
        vsn: Vsn::V2,
        key: loadgen::anon_key()?,
    };
    println!(
        "cluster_fanout: {} — publisher on node 1, subscribers on nodes 2 and 3 through Redis; then one node",
        w.describe()
    );

    let (redis, redis_port) = loadgen::start_redis().await?;
    let redis_pid = redis.id().unwrap_or(0);
    let url = format!("redis://127.0.0.1:{redis_port}");
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        nodes.push(loadgen::start_realtime(&[("CLUSTER_URL", &url), ("NODE_ID", name)]).await?);
    }
    // Let the nodes hear each other before joining.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let target = Target {
        publisher_port: nodes[0].port,
        subscriber_ports: vec![nodes[1].port, nodes[2].port],
        pids: nodes.iter().map(|n| n.pid).collect(),
    };
    let redis_cpu0 = loadgen::cpu_secs(redis_pid);
    let cluster = loadgen::run_fanout_on(&proto, &target, &w, true).await?;
    let redis_cpu = loadgen::cpu_secs(redis_pid) - redis_cpu0;
    println!("{} (Redis CPU {redis_cpu:.1} s)", cluster.summary(&w));
    for n in nodes {
        n.stop().await;
    }
    drop(redis);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

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
