//! State shared by every connection and request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Verifier;
use crate::cluster::{self, ClusterBroker, Clustered};
use crate::config::Config;
use crate::fanout::{ChannelId, Registry};
use crate::limits::Limits;
use crate::postgres_changes::replication::ChangeFeed;
use crate::postgres_changes::PgChanges;
use crate::presence::state::ReplicaId;
use crate::presence::PresenceHub;
use crate::publish::broker::{Broker, ChangeConsumer, Local};
use crate::publish::history::History;
use crate::publish::Publisher;

/// Everything a handler may need, behind one `Arc`.
pub struct App {
    /// Settings.
    pub config: Config,
    /// JWT verification.
    pub verifier: Verifier,
    /// Topic membership and the publish path (shared with the presence flusher).
    pub publish: Arc<Publisher>,
    /// Presence per topic (shared with the presence flusher).
    pub presence: Arc<PresenceHub>,
    /// Postgres Changes, when a database is configured.
    pub pg: Option<Arc<PgChanges>>,
    /// Rate counters and limits.
    pub limits: Arc<Limits>,
    /// The cluster broker, with `CLUSTER_URL`.
    pub cluster: Option<Arc<ClusterBroker>>,
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
        cluster: Option<cluster::Settings>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<App>, String> {
        let registry = Arc::new(Registry::default());
        let changes = pg.clone().map(|pg| Arc::new(ChangeFeed(pg)) as Arc<dyn ChangeConsumer>);
        let local = Local::new(registry.clone(), changes);
        // One id per process start: this node's presence replica and its cluster origin.
        let replica = ReplicaId(rand::random());
        let (broker, cluster): (Arc<dyn Broker>, _) = match cluster {
            None => (Arc::new(local), None),
            Some(settings) => {
                let broker = cluster::start(&settings, registry.clone(), local, replica.0)?;
                (Arc::new(Clustered(broker.clone())), Some(broker))
            }
        };
        let publish = Arc::new(Publisher::new(registry, broker, history, limits.clone()));
        let presence = Arc::new(
            PresenceHub::new(replica)
                .with_last_seen_window(std::time::Duration::from_secs(config.presence_last_seen_seconds)),
        );
        if let Some(cluster) = &cluster {
            cluster.attach_presence(presence.clone(), &publish);
        }
        Ok(Arc::new(App {
            config,
            verifier,
            publish,
            presence,
            pg,
            limits,
            cluster,
            shutdown,
            next_channel: AtomicU64::new(1),
        }))
    }

    /// A process-unique channel id.
    pub fn new_channel_id(&self) -> ChannelId {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }
}
