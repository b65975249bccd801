//! Scenario 1 — broadcast fan-out through the real `realtime` binary over loopback.
//!
//! `topics` topics × `subscribers` subscribers each (default 1 × 1,000; `--topics 100
//! --subscribers 100` for the many-topics shape), publishers sending user broadcasts at a
//! rising rate until p99 passes `--stop-p99-ms` (50); reports the highest deliveries/s
//! whose p99 stayed ≤ `--ok-p99-ms` (25) with ≥ 99 % delivered.
//!
//! `cargo bench --bench fanout -- [--vsn 2.0.0|1.0.0] [--topics T] [--subscribers N]
//!  [--publishers P] [--step-secs S] [--start-rate R] [--growth G] [--max-rate M]
//!  [--rates a,b,c] [--payload-pad BYTES]` (each flag also as env `BENCH_<FLAG>`).

#[path = "loadgen/mod.rs"]
mod loadgen;

use loadgen::{Fanout, Params, Proto, Res, Vsn};
use serde_json::json;

#[tokio::main]
async fn main() -> Res<()> {
    let p = Params::parse();
    let nofile = loadgen::raise_nofile();
    let vsn: Vsn = p.get("vsn", Vsn::V2)?;
    let w = Fanout::from_params(&p, 1, 1000)?;
    let server = loadgen::start_realtime(&[]).await?;
    println!(
        "fanout: {} via realtime-rs vsn {}, {} publisher(s), {} s per step, server pid {} (fd limit {nofile})",
        w.describe(),
        vsn.as_str(),
        w.publishers,
        w.step_secs,
        server.pid
    );
    let proto = Proto::Phoenix {
        vsn,
        key: loadgen::anon_key()?,
    };
    let r = loadgen::run_fanout(&proto, server.port, server.pid, &w, true).await?;
    let mut record = r.json();
    if let Some(o) = record.as_object_mut() {
        o.insert("scenario".into(), json!("fanout"));
        o.insert("vsn".into(), json!(vsn.as_str()));
        o.insert("topics".into(), json!(w.topics));
        o.insert("subscribers_per_topic".into(), json!(w.subscribers));
        o.insert("publishers".into(), json!(w.publishers));
    }
    loadgen::report(&r.summary(&w), record)?;
    server.stop().await;
    if r.total_delivered() == 0 || r.errors > 0 {
        return Err(loadgen::err(format!(
            "harness failure: {} delivered, {} subscribers lost",
            r.total_delivered(),
            r.errors
        )));
    }
    Ok(())
}
