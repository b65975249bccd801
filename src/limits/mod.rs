//! Supabase's limits (protocol.md §11.1), each configurable: server-wide averaged rates
//! (joins, events, presence events), concurrent connections, and per-client limits that
//! a JWT claim can select from profiles in a TOML file ("free tier 3 channels, paid tier
//! 10 channels"), falling back to the global settings.

pub mod rate;
mod tiers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ahash::AHashMap;
use serde_json::Value;

pub use rate::{CallWindow, RateCounter};
pub use tiers::load_tiers;

use crate::config::Config;

/// Limits that apply per client (per channel's token), selectable by tier.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Channels one connection may join.
    pub max_channels_per_client: usize,
    /// Largest broadcast / presence payload, KB (compared as `kb * 1000 + 500` bytes).
    pub max_payload_size_kb: usize,
    /// Presence pushes a channel may make within `client_presence_window`.
    pub client_presence_max_calls: usize,
    /// The presence window.
    pub client_presence_window: Duration,
}

impl ClientLimits {
    /// Largest payload in bytes, compared like Supabase.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_size_kb.saturating_mul(1000).saturating_add(500)
    }
}

/// Server-wide counters and the limits to compare them with.
pub struct Limits {
    /// Channel joins (averaged per second).
    pub joins: RateCounter,
    /// Broadcast events, counted as Supabase counts them: each client or REST or database
    /// broadcast, plus one per channel it is delivered to.
    pub events: RateCounter,
    /// Presence pushes.
    pub presence_events: RateCounter,
    connections: AtomicUsize,
    /// Most open WebSocket connections.
    pub max_concurrent_users: usize,
    /// Most joins per second (averaged).
    pub max_joins_per_second: f64,
    /// Most broadcast events per second (averaged).
    pub max_events_per_second: f64,
    /// Most presence events per second (averaged).
    pub max_presence_events_per_second: f64,
    global: Arc<ClientLimits>,
    tiers: AHashMap<String, Arc<ClientLimits>>,
    tier_claim: String,
}

impl Limits {
    /// Limits from the configuration; `tiers` from [`load_tiers`].
    pub fn new(config: &Config, tiers: AHashMap<String, ClientLimits>) -> Limits {
        let tick = Duration::from_millis(config.rate_tick_ms.max(1));
        let buckets = config.rate_window_buckets;
        Limits {
            joins: RateCounter::new(tick, buckets),
            events: RateCounter::new(tick, buckets),
            presence_events: RateCounter::new(tick, buckets),
            connections: AtomicUsize::new(0),
            max_concurrent_users: config.max_concurrent_users,
            max_joins_per_second: config.max_joins_per_second as f64,
            max_events_per_second: config.max_events_per_second as f64,
            max_presence_events_per_second: config.max_presence_events_per_second as f64,
            global: Arc::new(global_client_limits(config)),
            tiers: tiers.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            tier_claim: config.tier_claim.clone(),
        }
    }

    /// The client limits for a token's claims: its tier's profile, else the global ones.
    pub fn for_claims(&self, claims: &crate::auth::Claims) -> Arc<ClientLimits> {
        if self.tiers.is_empty() {
            return self.global.clone();
        }
        claims
            .get(&self.tier_claim)
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|tier| self.tiers.get(tier))
            .unwrap_or(&self.global)
            .clone()
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection for as long as the guard lives.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Whether joins are over their limit now.
    pub fn joins_exceeded(&self) -> bool {
        self.joins.rate() > self.max_joins_per_second
    }

    /// Whether broadcast events are over their limit now.
    pub fn events_exceeded(&self) -> bool {
        self.events.rate() > self.max_events_per_second
    }

    /// Whether presence events are over their limit now.
    pub fn presence_exceeded(&self) -> bool {
        self.presence_events.rate() > self.max_presence_events_per_second
    }

    fn tick(&self) {
        self.joins.tick();
        self.events.tick();
        self.presence_events.tick();
    }

    /// Starts the task that closes the counters' buckets every tick.
    pub fn spawn_ticker(limits: &Arc<Limits>, tick: Duration) {
        let weak: Weak<Limits> = Arc::downgrade(limits);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(limits) = weak.upgrade() else { return };
                limits.tick();
            }
        });
    }
}

/// Keeps one connection counted.
pub struct ConnectionGuard(Arc<Limits>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-client limits set by flags and environment.
pub fn global_client_limits(config: &Config) -> ClientLimits {
    ClientLimits {
        max_channels_per_client: config.max_channels_per_client,
        max_payload_size_kb: config.max_payload_size_kb,
        client_presence_max_calls: config.client_presence_max_calls,
        client_presence_window: Duration::from_millis(config.client_presence_window_ms),
    }
}
