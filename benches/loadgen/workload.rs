//! The fan-out workload's parameters, per-step figures and the comparison of two servers.

use super::*;

/// The fan-out workload: `topics` topics × `subscribers` each, one publisher socket per
/// topic group, publish rate rising step by step.
#[derive(Clone)]
pub struct Fanout {
    pub topics: usize,
    pub subscribers: usize,
    pub publishers: usize,
    pub step_secs: f64,
    pub rates: Vec<u64>,
    pub stop_p99_ms: f64,
    pub ok_p99_ms: f64,
    pub pad: usize,
    pub connect_parallel: usize,
    /// Seconds of publishing at the first rate before the first step (not recorded).
    pub warmup_secs: f64,
}

impl Fanout {
    /// Reads the common flags; `default_subs` is per topic.
    pub fn from_params(p: &Params, default_topics: usize, default_subs: usize) -> Res<Fanout> {
        let topics: usize = p.get("topics", default_topics)?;
        let start: f64 = p.get("start-rate", 100.0)?;
        let growth: f64 = p.get("growth", 1.25)?;
        let max_rate: f64 = p.get("max-rate", 200_000.0)?;
        let rates = match p.list::<u64>("rates")? {
            Some(r) => r,
            None => {
                let mut r = Vec::new();
                let mut x = start;
                while x <= max_rate && r.len() < 200 {
                    let v = x.round() as u64;
                    if r.last() != Some(&v) {
                        r.push(v);
                    }
                    x *= growth.max(1.01);
                }
                r
            }
        };
        Ok(Fanout {
            topics: topics.max(1),
            subscribers: p.get("subscribers", default_subs)?,
            publishers: p.get("publishers", 1usize)?.clamp(1, topics.max(1)),
            step_secs: p.get("step-secs", 3.0)?,
            rates,
            stop_p99_ms: p.get("stop-p99-ms", 50.0)?,
            ok_p99_ms: p.get("ok-p99-ms", 25.0)?,
            pad: p.get("payload-pad", 0usize)?,
            connect_parallel: p.get("connect-parallel", 64usize)?,
            warmup_secs: p.get("warmup-secs", 1.0)?,
        })
    }

    pub fn describe(&self) -> String {
        format!("{} topic(s) × {} subscribers", self.topics, self.subscribers)
    }
}

pub struct Step {
    pub rate: u64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds the server and the generator used during the step.
    pub server_cpu_s: f64,
    pub generator_cpu_s: f64,
}

impl Step {
    pub fn json(&self) -> Value {
        json!({"rate": self.rate, "sent": self.sent, "expected": self.expected, "delivered": self.delivered,
               "deliveries_per_s": self.deliveries_per_s.round(), "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
               "p99_ms": self.p99_ms, "max_ms": self.max_ms,
               "server_cpu_s": (self.server_cpu_s * 100.0).round() / 100.0,
               "generator_cpu_s": (self.generator_cpu_s * 100.0).round() / 100.0})
    }
}

pub struct FanoutResult {
    pub proto: String,
    pub steps: Vec<Step>,
    /// Index of the best step with p99 ≤ ok_p99_ms and ≥ 99 % delivered.
    pub best: Option<usize>,
    pub connect_secs: f64,
    pub rss_kb_joined: u64,
    pub rss_kb_after: u64,
    pub errors: u64,
}

impl FanoutResult {
    pub fn best(&self) -> Option<&Step> {
        self.best.map(|i| &self.steps[i])
    }

    pub fn best_rate(&self) -> f64 {
        self.best().map(|s| s.deliveries_per_s).unwrap_or(0.0)
    }

    /// Deliveries per CPU-second of the server over all steps: an efficiency figure that a
    /// busy machine disturbs far less than latency.
    pub fn per_server_cpu_s(&self) -> f64 {
        let cpu: f64 = self.steps.iter().map(|s| s.server_cpu_s).sum();
        if cpu > 0.0 {
            self.total_delivered() as f64 / cpu
        } else {
            0.0
        }
    }

    pub fn total_delivered(&self) -> u64 {
        self.steps.iter().map(|s| s.delivered).sum()
    }

    pub fn json(&self) -> Value {
        let b = self.best();
        json!({
            "server": self.proto,
            "deliveries_per_s": b.map(|s| s.deliveries_per_s.round()),
            "p50_ms": b.map(|s| s.p50_ms),
            "p99_ms": b.map(|s| s.p99_ms),
            "at_rate": b.map(|s| s.rate),
            "delivered_total": self.total_delivered(),
            "deliveries_per_server_cpu_s": self.per_server_cpu_s().round(),
            "connect_secs": self.connect_secs,
            "server_rss_kb_joined": self.rss_kb_joined,
            "server_rss_kb_after": self.rss_kb_after,
            "errors": self.errors,
            "steps": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
        })
    }

    pub fn summary(&self, w: &Fanout) -> String {
        match self.best() {
            Some(b) => format!(
                "{}: max {:.0} deliveries/s at p99 {:.2} ms (≤ {} ms; p50 {:.2} ms) at {} msgs/s, {}; {} steps, {} errors",
                self.proto, b.deliveries_per_s, b.p99_ms, w.ok_p99_ms, b.p50_ms, b.rate, w.describe(), self.steps.len(), self.errors
            ),
            None => format!(
                "{}: no step met p99 ≤ {} ms with ≥ 99 % delivered ({}; {} steps, {} delivered, {} errors)",
                self.proto, w.ok_p99_ms, w.describe(), self.steps.len(), self.total_delivered(), self.errors
            ),
        }
    }
}

/// realtime-rs against another server on the same workload: the summary line, the
/// ratio of deliveries/s at the p99 bound, and the ratio of deliveries per server
/// CPU-second (each `None` when the other server has no figure).
pub struct Comparison {
    pub summary: String,
    pub ratio: Option<f64>,
    pub cpu_ratio: Option<f64>,
}

pub fn compare(rt: &FanoutResult, other: &FanoutResult, other_name: &str, w: &Fanout) -> Comparison {
    let divide = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let show = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "n/a".into());
    let ratio = divide(rt.best_rate(), other.best_rate());
    let cpu_ratio = divide(rt.per_server_cpu_s(), other.per_server_cpu_s());
    let summary = format!(
        "realtime-rs ÷ {other_name} = {} ({:.0} vs {:.0} deliveries/s at p99 ≤ {} ms, {}); \
         deliveries per server CPU-second: {:.0} vs {:.0} (ratio {})",
        show(ratio),
        rt.best_rate(),
        other.best_rate(),
        w.ok_p99_ms,
        w.describe(),
        rt.per_server_cpu_s(),
        other.per_server_cpu_s(),
        show(cpu_ratio)
    );
    Comparison {
        summary,
        ratio,
        cpu_ratio,
    }
}
