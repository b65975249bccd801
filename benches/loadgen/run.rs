//! Running the rising-rate fan-out: subscribers, publishers, drains, steps.

use super::*;

/// Where a fan-out runs: the publishers' server, the subscribers' servers (subscriber `i`
/// on `subscriber_ports[i % len]`), and the processes whose CPU and memory are "the
/// server" (every node of a cluster; not the engine, reported apart).
pub struct Target {
    pub publisher_port: u16,
    pub subscriber_ports: Vec<u16>,
    pub pids: Vec<u32>,
}

impl Target {
    /// One server for everything.
    pub fn single(port: u16, pid: u32) -> Target {
        Target {
            publisher_port: port,
            subscriber_ports: vec![port],
            pids: vec![pid],
        }
    }

    fn cpu_secs(&self) -> f64 {
        self.pids.iter().map(|p| cpu_secs(*p)).sum()
    }

    fn rss_kb(&self) -> u64 {
        self.pids.iter().map(|p| rss_kb(*p)).sum()
    }
}

/// Runs the rising-rate fan-out against a server on `port` (RSS read from `pid`).
pub async fn run_fanout(proto: &Proto, port: u16, pid: u32, w: &Fanout, verbose: bool) -> Res<FanoutResult> {
    run_fanout_on(proto, &Target::single(port, pid), w, verbose).await
}

/// Runs the rising-rate fan-out against `target`.
pub async fn run_fanout_on(proto: &Proto, target: &Target, w: &Fanout, verbose: bool) -> Res<FanoutResult> {
    let recorder = Recorder::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let topics: Vec<String> = (0..w.topics).map(|i| proto.topic(i)).collect();
    let started = Instant::now();

    // Subscribers, `connect_parallel` at a time.
    let total = w.topics * w.subscribers;
    let mut set: JoinSet<Res<(usize, Ws)>> = JoinSet::new();
    let mut next = 0usize;
    let mut opened = Vec::with_capacity(total);
    while opened.len() < total {
        while next < total && set.len() < w.connect_parallel.max(1) {
            let (proto, topic, i) = (proto.clone(), topics[next % w.topics].clone(), next);
            let port = target.subscriber_ports[next % target.subscriber_ports.len().max(1)];
            set.spawn(async move { Ok((i, proto.open(port, &[topic], None).await?)) });
            next += 1;
        }
        match set.join_next().await {
            Some(r) => opened.push(r??),
            None => break,
        }
    }
    for (i, ws) in opened {
        spawn_receiver(proto, ws, i, recorder.clone(), stop.clone());
    }

    // Publishers: publisher p serves topics p, p + P, …
    let mut pubs = Vec::new();
    for p in 0..w.publishers {
        let mine: Vec<String> = topics.iter().skip(p).step_by(w.publishers).cloned().collect();
        let ws = proto.open(target.publisher_port, &mine, None).await?;
        let (reader, writer) = split(ws);
        // Drain whatever the server sends the publisher (replies, pings).
        spawn_drain(proto.clone(), reader, writer.clone(), stop.clone());
        if let Some(vsn) = proto.heartbeats() {
            spawn_heartbeats(writer.clone(), vsn, Duration::from_secs(25), stop.clone());
        }
        pubs.push((mine, writer));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_kb_joined = target.rss_kb();
    if verbose {
        println!(
            "{}: {} connected and subscribed in {:.1} s, server RSS {} KB",
            proto.name(),
            w.describe(),
            connect_secs,
            rss_kb_joined
        );
        println!(
            "{:>9} {:>9} {:>11} {:>11} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "msgs/s",
            "sent",
            "expected",
            "delivered",
            "deliveries/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "srv cpu",
            "gen cpu"
        );
    }

    if w.warmup_secs > 0.0 {
        let rate = w.rates.first().copied().unwrap_or(100) as f64 / w.publishers as f64;
        for (mine, writer) in &pubs {
            publish(proto, mine, writer, rate, w.warmup_secs, 0, w.pad).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut steps = Vec::new();
    for (k, &rate) in w.rates.iter().enumerate() {
        let step_no = k as u32 + 1;
        recorder.begin(step_no);
        let t0 = now_ns();
        let (cpu_server0, cpu_gen0) = (target.cpu_secs(), cpu_secs(std::process::id()));
        let per_pub = rate as f64 / w.publishers as f64;
        let mut tasks = JoinSet::new();
        for (mine, writer) in &pubs {
            let (proto, mine, writer, secs, pad) = (proto.clone(), mine.clone(), writer.clone(), w.step_secs, w.pad);
            tasks.spawn(async move { publish(&proto, &mine, &writer, per_pub, secs, step_no, pad).await });
        }
        let mut sent = 0u64;
        while let Some(r) = tasks.join_next().await {
            sent += r??;
        }
        let expected = sent * w.subscribers as u64;
        // Let the step drain: until everything arrived, or 3 s without progress.
        let mut last = (recorder.delivered(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let d = recorder.delivered();
            if d >= expected {
                break;
            }
            if d != last.0 {
                last = (d, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let c = recorder.collect()?;
        let span = (c.last_ns.saturating_sub(t0) as f64 / 1e9).max(w.step_secs).max(0.001);
        let step = Step {
            rate,
            sent,
            expected,
            delivered: c.count,
            deliveries_per_s: c.count as f64 / span,
            p50_ms: ms(c.hist.value_at_quantile(0.5)),
            p90_ms: ms(c.hist.value_at_quantile(0.9)),
            p99_ms: ms(c.hist.value_at_quantile(0.99)),
            max_ms: ms(c.hist.max()),
            server_cpu_s: target.cpu_secs() - cpu_server0,
            generator_cpu_s: cpu_secs(std::process::id()) - cpu_gen0,
        };
        if verbose {
            println!(
                "{:>9} {:>9} {:>11} {:>11} {:>13.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2}s {:>7.2}s",
                step.rate,
                step.sent,
                step.expected,
                step.delivered,
                step.deliveries_per_s,
                step.p50_ms,
                step.p90_ms,
                step.p99_ms,
                step.max_ms,
                step.server_cpu_s,
                step.generator_cpu_s
            );
        }
        let over = step.p99_ms > w.stop_p99_ms || step.delivered * 10 < step.expected * 9;
        steps.push(step);
        if over {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let best = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.p99_ms <= w.ok_p99_ms && s.delivered * 100 >= s.expected * 99 && s.delivered > 0)
        .max_by(|a, b| a.1.deliveries_per_s.total_cmp(&b.1.deliveries_per_s))
        .map(|(i, _)| i);
    let result = FanoutResult {
        proto: proto.name(),
        steps,
        best,
        connect_secs,
        rss_kb_joined,
        rss_kb_after: target.rss_kb(),
        errors: recorder.errors.load(Ordering::Relaxed) + recorder.closed.load(Ordering::Relaxed),
    };
    // Dropping the publishers' writers and the stop flag lets every task end.
    drop(pubs);
    Ok(result)
}

fn spawn_receiver(proto: &Proto, ws: Ws, who: usize, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let proto = proto.clone();
    tokio::spawn(async move {
        let (mut reader, writer) = split(ws);
        if let Some(vsn) = proto.heartbeats() {
            spawn_heartbeats(writer.clone(), vsn, Duration::from_secs(25), stop.clone());
        }
        loop {
            match next_frame(&mut reader, &writer).await {
                Ok(Some((op, data))) => {
                    if let Some((step, t)) = read_stamp(&data) {
                        recorder.record(who, step, t);
                    } else if let Some(answer) = proto.answer(op, &data) {
                        let _ = send_text(&writer, answer).await;
                    }
                }
                Ok(None) => {
                    if !stop.load(Ordering::Relaxed) {
                        recorder.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(_) => {
                    if !stop.load(Ordering::Relaxed) {
                        recorder.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
}

fn spawn_drain(proto: Proto, mut reader: Reader, writer: Writer, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while let Ok(Some((op, data))) = next_frame(&mut reader, &writer).await {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(answer) = proto.answer(op, &data) {
                let _ = send_text(&writer, answer).await;
            }
        }
    });
}

/// Publishes at `rate` msgs/s for `secs`, round-robin over `topics`; returns the count.
async fn publish(
    proto: &Proto,
    topics: &[String],
    writer: &Writer,
    rate: f64,
    secs: f64,
    step: u32,
    pad: usize,
) -> Res<u64> {
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while start.elapsed() < dur {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64().min(secs) * rate) as u64;
        let mut w = writer.lock().await;
        while sent < due {
            let i = (sent as usize) % topics.len();
            let (op, bytes) = proto.publish(&topics[i], i + 1, &stamp(step, now_ns(), pad));
            w.write_frame(Frame::new(true, op, None, Payload::Owned(bytes))).await?;
            sent += 1;
        }
    }
    Ok(sent)
}
