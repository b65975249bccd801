//! Prometheus metrics (`metrics` facade, rendered by `metrics-exporter-prometheus` into our
//! own `/metrics` response). Every counter and histogram on a hot path is registered once
//! and kept as a handle, so recording is an atomic add; state gauges are set from
//! [`super::state`] at scrape time.
//!
//! Names (all prefixed `realtime_`): see [`describe`] and the README's Operations section.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use realtime_protocol::event::ClientEvent;
use tracing::{debug, info, warn};

/// Buckets of the fan-out duration (one publish to every subscriber's outbox).
const FANOUT_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1,
];
/// Buckets of RLS check durations (database round trips).
const RLS_BUCKETS: &[f64] = &[
    2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// How often histogram buffers are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static H: LazyLock<Handles> = LazyLock::new(Handles::register);

/// Installs the Prometheus recorder (once per process) and starts its upkeep task.
/// Must run inside the runtime, before anything records.
pub fn init() {
    if HANDLE.get().is_some() {
        return;
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("realtime_fanout_duration_seconds".into()), FANOUT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("realtime_rls_check_duration_seconds".into()), RLS_BUCKETS)
        });
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "cannot install the metrics recorder: /metrics will be empty");
            return;
        }
    };
    describe();
    LazyLock::force(&H);
    let upkeep = handle.clone();
    let _ = HANDLE.set(handle);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    info!("metrics recorder installed");
}

/// The Prometheus text of every metric (empty when [`init`] did not run).
pub fn render() -> String {
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}

fn describe() {
    describe_gauge!("realtime_connections", "Open WebSocket connections.");
    describe_counter!(
        "realtime_cluster_published_total",
        "Messages handed to the cluster engine."
    );
    describe_counter!(
        "realtime_cluster_received_total",
        "Messages received from the cluster engine."
    );
    describe_counter!(
        "realtime_cluster_dropped_total",
        "Messages not handed to the cluster engine (queue full or engine away): other nodes missed them."
    );
    describe_counter!("realtime_connection_opens_total", "WebSocket connections opened.");
    describe_counter!(
        "realtime_webhook_batches_delivered_total",
        "Webhook batches a receiver accepted (2xx)."
    );
    describe_counter!("realtime_webhook_retries_total", "Webhook delivery attempts retried.");
    describe_counter!(
        "realtime_webhook_batches_dropped_total",
        "Webhook batches dropped, by reason (queue_full: the oldest made room; retries_exhausted)."
    );
    describe_counter!(
        "realtime_webhook_events_dropped_total",
        "Webhook events dropped before batching (the batcher fell behind)."
    );
    describe_counter!(
        "realtime_connection_closes_total",
        "WebSocket connections closed, by reason (peer, dead, idle, slow, shutdown)."
    );
    describe_counter!(
        "realtime_slow_consumers_disconnected_total",
        "Connections closed because their outbound queue overflowed."
    );
    describe_counter!("realtime_joins_total", "Channel joins, by result (ok, refused).");
    describe_gauge!("realtime_channels", "Joined channels, by kind (public, private).");
    describe_gauge!(
        "realtime_postgres_changes_subscriptions",
        "postgres_changes bindings of joined channels."
    );
    describe_gauge!("realtime_presence_keys", "Tracked presences (metas) over all topics.");
    describe_counter!("realtime_messages_in_total", "Client messages received, by event.");
    describe_counter!(
        "realtime_messages_out_total",
        "Messages queued to clients, by event (a fan-out counts once per recipient)."
    );
    describe_counter!("realtime_frames_out_total", "WebSocket frames written (all kinds).");
    describe_counter!(
        "realtime_bytes_out_total",
        Unit::Bytes,
        "WebSocket payload bytes written."
    );
    describe_counter!(
        "realtime_limit_rejections_total",
        "Requests refused by a limit, by reason."
    );
    describe_counter!("realtime_rls_checks_total", "RLS checks (one per viewer), by kind.");
    describe_histogram!(
        "realtime_rls_check_duration_seconds",
        Unit::Seconds,
        "Duration of one RLS check round, by kind."
    );
    describe_histogram!(
        "realtime_fanout_duration_seconds",
        Unit::Seconds,
        "Time to queue one published message on every subscriber's outbox."
    );
    describe_gauge!(
        "realtime_replication_connected",
        "1 when the replication stream is streaming (or waiting for its publication), by stream."
    );
    describe_gauge!(
        "realtime_replication_lag_bytes",
        Unit::Bytes,
        "Server WAL not yet handled, by stream."
    );
    describe_gauge!(
        "realtime_replication_lag_seconds",
        Unit::Seconds,
        "Commit-to-delivery delay of the last transaction (0 when caught up), by stream."
    );
    describe_gauge!("realtime_uptime_seconds", Unit::Seconds, "Seconds since start.");
    describe_gauge!(
        "realtime_cluster_leader",
        "1 when this node holds the replication lease (streams the database for the cluster)."
    );
    describe_gauge!(
        "realtime_cluster_engine_connected",
        "1 while this node's link to the cluster engine is up."
    );
    describe_gauge!("realtime_cluster_nodes_alive", "Nodes heard from, this one included.");
    describe_histogram!(
        "realtime_cluster_engine_roundtrip_seconds",
        Unit::Seconds,
        "Time for a heartbeat to be taken by the cluster engine (one round trip), every second."
    );
}

const CLOSE_REASONS: [&str; 5] = ["peer", "dead", "idle", "slow", "shutdown"];
const IN_EVENTS: [&str; 7] = [
    "heartbeat",
    "phx_join",
    "phx_leave",
    "access_token",
    "broadcast",
    "presence",
    "other",
];

/// Outbound message kinds counted by [`out`].
#[derive(Debug, Clone, Copy)]
pub enum Out {
    /// User broadcasts (WebSocket, REST, database).
    Broadcast = 0,
    /// `presence_diff`.
    PresenceDiff = 1,
    /// `presence_state`.
    PresenceState = 2,
    /// `postgres_changes`.
    PostgresChanges = 3,
    /// `system`.
    System = 4,
    /// `phx_reply`.
    Reply = 5,
    /// `phx_close`.
    Close = 6,
}
const OUT_EVENTS: [&str; 7] = [
    "broadcast",
    "presence_diff",
    "presence_state",
    "postgres_changes",
    "system",
    "phx_reply",
    "phx_close",
];

/// What an RLS check decides.
#[derive(Debug, Clone, Copy)]
pub enum Rls {
    /// Row visibility for Postgres Changes.
    PostgresChanges = 0,
    /// Read access to a private channel.
    ChannelRead = 1,
    /// Write access to a private channel.
    ChannelWrite = 2,
    /// Row visibility for Postgres Changes, decided for many viewers by one statement
    /// (counts viewer groups).
    PostgresChangesShared = 3,
}
const RLS_KINDS: [&str; 4] = [
    "postgres_changes",
    "channel_read",
    "channel_write",
    "postgres_changes_shared",
];

struct Handles {
    opens: Counter,
    closes: [Counter; 5],
    slow: Counter,
    join_ok: Counter,
    join_refused: Counter,
    msg_in: [Counter; 7],
    msg_out: [Counter; 7],
    frames_out: Counter,
    bytes_out: Counter,
    fanout: Histogram,
    rls_checks: [Counter; 4],
    rls_time: [Histogram; 4],
    cluster_published: Counter,
    cluster_received: Counter,
    cluster_dropped: Counter,
    cluster_roundtrip: Histogram,
}

impl Handles {
    fn register() -> Handles {
        Handles {
            opens: counter!("realtime_connection_opens_total"),
            closes: CLOSE_REASONS.map(|r| counter!("realtime_connection_closes_total", "reason" => r)),
            slow: counter!("realtime_slow_consumers_disconnected_total"),
            join_ok: counter!("realtime_joins_total", "result" => "ok"),
            join_refused: counter!("realtime_joins_total", "result" => "refused"),
            msg_in: IN_EVENTS.map(|e| counter!("realtime_messages_in_total", "event" => e)),
            msg_out: OUT_EVENTS.map(|e| counter!("realtime_messages_out_total", "event" => e)),
            frames_out: counter!("realtime_frames_out_total"),
            bytes_out: counter!("realtime_bytes_out_total"),
            fanout: histogram!("realtime_fanout_duration_seconds"),
            rls_checks: RLS_KINDS.map(|k| counter!("realtime_rls_checks_total", "kind" => k)),
            rls_time: RLS_KINDS.map(|k| histogram!("realtime_rls_check_duration_seconds", "kind" => k)),
            cluster_published: counter!("realtime_cluster_published_total"),
            cluster_received: counter!("realtime_cluster_received_total"),
            cluster_dropped: counter!("realtime_cluster_dropped_total"),
            cluster_roundtrip: histogram!("realtime_cluster_engine_roundtrip_seconds"),
        }
    }
}

/// `n` messages were handed to the cluster engine.
pub fn cluster_published(n: usize) {
    H.cluster_published.increment(n as u64);
}

/// `n` messages arrived from the cluster engine.
pub fn cluster_received(n: usize) {
    H.cluster_received.increment(n as u64);
}

/// The engine took a message `took` after it was published.
pub fn cluster_roundtrip(took: std::time::Duration) {
    H.cluster_roundtrip.record(took.as_secs_f64());
}

/// `n` messages could not be handed to the cluster engine (queue full, engine away): other
/// nodes miss them.
pub fn cluster_dropped(n: usize) {
    H.cluster_dropped.increment(n as u64);
}

/// A request was refused by a limit (`reason`: e.g. `max_channels_per_client`,
/// `payload_size`, `frame_size`). Rare, so the label is looked up per call.
pub fn limit_rejected(reason: &'static str) {
    counter!("realtime_limit_rejections_total", "reason" => reason).increment(1);
}

/// A client sent a WebSocket message over `MAX_FRAME_SIZE`: its connection ends.
pub fn frame_too_large(limit: u64) {
    info!(
        reason = "frame_size",
        limit, "message over MAX_FRAME_SIZE: closing the connection"
    );
    limit_rejected("frame_size");
}

/// A WebSocket connection opened.
pub fn connection_opened() {
    super::state::CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    H.opens.increment(1);
}

/// A WebSocket connection closed for `reason` (one of peer, dead, idle, slow, shutdown).
pub fn connection_closed(reason: &'static str) {
    super::state::CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason) {
        H.closes[i].increment(1);
    }
    if reason == "slow" {
        H.slow.increment(1);
    }
}

/// A join was refused.
pub fn join_refused() {
    H.join_refused.increment(1);
}

/// A channel joined (`pg_bindings`: its postgres_changes bindings); counts as an ok join.
pub fn channel_opened(private: bool, pg_bindings: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    H.join_ok.increment(1);
    let kind = if private {
        &super::state::PRIVATE_CHANNELS
    } else {
        &super::state::PUBLIC_CHANNELS
    };
    kind.fetch_add(1, Relaxed);
    super::state::PG_SUBSCRIPTIONS.fetch_add(pg_bindings as i64, Relaxed);
}

/// A channel left or was closed (`by_server`: the client is told with `phx_close`;
/// otherwise its socket is gone).
pub fn channel_closed(topic: &str, private: bool, pg_bindings: usize, notify: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    debug!(topic, phx_close = notify, "channel closed");
    if notify {
        H.msg_out[Out::Close as usize].increment(1);
    }
    let kind = if private {
        &super::state::PRIVATE_CHANNELS
    } else {
        &super::state::PUBLIC_CHANNELS
    };
    kind.fetch_sub(1, Relaxed);
    super::state::PG_SUBSCRIPTIONS.fetch_sub(pg_bindings as i64, Relaxed);
}

/// A client message arrived.
pub fn message_in(event: &ClientEvent) {
    let i = match event {
        ClientEvent::Heartbeat => 0,
        ClientEvent::Join(_) => 1,
        ClientEvent::Leave => 2,
        ClientEvent::AccessToken(_) => 3,
        ClientEvent::Broadcast(_) => 4,
        ClientEvent::Presence(_) => 5,
        ClientEvent::Other(_) => 6,
    };
    H.msg_in[i].increment(1);
}

/// `n` messages of kind `kind` were queued (one call per publish, not per recipient).
pub fn out(kind: Out, n: usize) {
    if n > 0 {
        H.msg_out[kind as usize].increment(n as u64);
    }
}

/// One batch of `frames` frames, `bytes` payload bytes, was written to a socket.
pub fn written(frames: usize, bytes: usize) {
    H.frames_out.increment(frames as u64);
    H.bytes_out.increment(bytes as u64);
}

/// A publish that started at `started` has queued its message everywhere.
pub fn fanout_done(started: Instant) {
    H.fanout.record(started.elapsed().as_secs_f64());
}

/// Measures an RLS check round from creation to drop.
pub struct RlsTimer {
    kind: Rls,
    started: Instant,
}

impl RlsTimer {
    /// Starts timing a round of `checks` checks (viewers) of `kind`.
    pub fn start(kind: Rls, checks: usize) -> RlsTimer {
        H.rls_checks[kind as usize].increment(checks as u64);
        RlsTimer {
            kind,
            started: Instant::now(),
        }
    }
}

impl Drop for RlsTimer {
    fn drop(&mut self) {
        H.rls_time[self.kind as usize].record(self.started.elapsed().as_secs_f64());
    }
}

/// A webhook batch was accepted by a receiver.
pub fn webhook_delivered() {
    counter!("realtime_webhook_batches_delivered_total").increment(1);
}

/// A webhook delivery is retried.
pub fn webhook_retried() {
    counter!("realtime_webhook_retries_total").increment(1);
}

/// A webhook batch was dropped (`queue_full`, `retries_exhausted`).
pub fn webhook_batch_dropped(reason: &'static str) {
    counter!("realtime_webhook_batches_dropped_total", "reason" => reason).increment(1);
}

/// Webhook events were dropped before batching.
pub fn webhook_events_dropped(n: u64) {
    counter!("realtime_webhook_events_dropped_total").increment(n);
}
