//! State shared by every connection and request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use realtime_protocol::BroadcastMessage;

use crate::auth::Verifier;
use crate::broadcast::history::History;
use crate::config::Config;
use crate::fanout::{ChannelId, Registry, TopicKey};
use crate::limits::Limits;
use crate::postgres_changes::PgChanges;
use crate::presence::state::ReplicaId;
use crate::presence::PresenceHub;

/// Everything a handler may need, behind one `Arc`.
pub struct App {
    /// Settings.
    pub config: Config,
    /// JWT verification.
    pub verifier: Verifier,
    /// Topic subscribers (shared with the presence flusher).
    pub registry: Arc<Registry>,
    /// Presence per topic (shared with the presence flusher).
    pub presence: Arc<PresenceHub>,
    /// Postgres Changes, when a database is configured.
    pub pg: Option<Arc<PgChanges>>,
    /// Rate counters and limits.
    pub limits: Arc<Limits>,
    /// Public broadcast history, with `REPLAY_PUBLIC=true`.
    pub history: Option<History>,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    next_channel: AtomicU64,
}

impl App {
    /// Builds the shared state.
    pub fn new(
        config: Config,
        verifier: Verifier,
        pg: Option<Arc<PgChanges>>,
        limits: Arc<Limits>,
        history: Option<History>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<App> {
        Arc::new(App {
            config,
            verifier,
            registry: Arc::new(Registry::default()),
            presence: Arc::new(PresenceHub::new(ReplicaId(rand::random()))),
            pg,
            limits,
            history,
            shutdown,
            next_channel: AtomicU64::new(1),
        })
    }

    /// Fans out a broadcast from a client or REST: public ones go through the history
    /// when it is on. Returns how many channels it was queued for.
    pub fn broadcast(&self, key: &TopicKey, msg: &BroadcastMessage, exclude: Option<ChannelId>) -> usize {
        let delivered = match &self.history {
            Some(history) if !key.private => history.publish(&self.registry, key, msg, exclude),
            _ => self.registry.broadcast(key, msg, exclude),
        };
        // Supabase counts the broadcast and each delivery against events per second.
        self.limits.events.add(1 + delivered as u64);
        delivered
    }

    /// A process-unique channel id.
    pub fn new_channel_id(&self) -> ChannelId {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }
}
