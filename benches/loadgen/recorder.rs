//! Latency recording in sharded HDR histograms, and the printed/appended results.

use super::*;

const SHARDS: usize = 64;

struct Shard {
    hist: Histogram<u64>,
    count: u64,
    last_ns: u64,
}

/// Latencies in microseconds, in shards so receivers rarely contend.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    step: AtomicU32,
    pub errors: AtomicU64,
    pub closed: AtomicU64,
}

pub struct Collected {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub last_ns: u64,
}

impl Recorder {
    pub fn new() -> Res<Arc<Recorder>> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(Mutex::new(Shard {
                hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
                count: 0,
                last_ns: 0,
            }));
        }
        Ok(Arc::new(Recorder {
            shards,
            step: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }))
    }

    /// Records a delivery stamped `(step, sent_ns)` received now by receiver `who`.
    pub fn record(&self, who: usize, step: u32, sent_ns: u64) {
        if step != self.step.load(Ordering::Acquire) {
            return; // a straggler of an earlier step
        }
        let now = now_ns();
        let us = (now.saturating_sub(sent_ns) / 1_000).max(1);
        if let Ok(mut s) = self.shards[who % SHARDS].lock() {
            s.hist.saturating_record(us);
            s.count += 1;
            s.last_ns = s.last_ns.max(now);
        }
    }

    /// Starts a new step: clears the shards.
    pub fn begin(&self, step: u32) {
        self.step.store(step, Ordering::Release);
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.hist.reset();
                s.count = 0;
                s.last_ns = 0;
            }
        }
    }

    pub fn delivered(&self) -> u64 {
        self.shards.iter().filter_map(|s| s.lock().ok().map(|s| s.count)).sum()
    }

    pub fn collect(&self) -> Res<Collected> {
        let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
        let (mut count, mut last_ns) = (0, 0);
        for s in &self.shards {
            let s = s.lock().map_err(|_| err("poisoned"))?;
            hist.add(&s.hist)?;
            count += s.count;
            last_ns = last_ns.max(s.last_ns);
        }
        Ok(Collected { hist, count, last_ns })
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// Prints the summary line and the JSON record; appends the record to `$BENCH_RESULTS`.
pub fn report(summary: &str, mut record: Value) -> Res<()> {
    if let Some(o) = record.as_object_mut() {
        o.entry("cpus").or_insert(json!(cpus()));
        o.entry("loadavg_1m").or_insert(json!(loadavg()));
        o.entry("unix_time").or_insert(json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)));
        if let Ok(c) = std::env::var("BENCH_COMMIT") {
            o.entry("commit").or_insert(json!(c));
        }
    }
    println!("summary: {summary}");
    let line = record.to_string();
    println!("{line}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        if !path.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
