//! Postgres Changes as a [`Sink`] of the replication driver (`crate::replication`), which
//! streams the slot, batches changes (group commit, chunks of a large transaction) and
//! acknowledges a transaction's end only once the batch is published: handed through the
//! publish path ([`Publisher::changes`]) to [`dispatch::deliver`], which queues its frames.
//! What is left here is this capability's part: while Postgres is away, subscribers are
//! told, and told again when it is back (every channel is re-resolved); a table whose shape
//! changed is read again from the catalog.

use std::sync::Arc;
use std::time::Duration;

use realtime_wal::change::Relation;
use tokio::sync::watch;

use super::{dispatch, PgChanges};
use crate::observability::state::PG_CHANGES;
use crate::publish::broker::{ChangeConsumer, Delivery};
use crate::publish::Publisher;
use crate::replication::{self, Batch, Sink};

/// Starts streaming the slot until shutdown (or an error that needs an operator),
/// publishing each batch through `publish`.
pub fn spawn(
    pg: &Arc<PgChanges>,
    publish: Arc<Publisher>,
    start_delay: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let settings = replication::Settings {
        db: pg.config.clone(),
        slot: pg.slot.clone(),
        publication: pg.publication.clone(),
        application_name: "realtime-rs".into(),
        start_delay,
        stats: &PG_CHANGES,
        shutdown,
    };
    tokio::spawn(replication::run(settings, Changes(pg.clone(), publish)))
}

/// The sink: each batch goes through the publish path to the RLS-checked fan-out.
struct Changes(Arc<PgChanges>, Arc<Publisher>);

impl Sink for Changes {
    /// One round at a time. Rounds can overlap (frames still leave in commit order:
    /// `dispatch` takes turns), but measured (`cargo bench --bench postgres_changes --
    /// --shapes a --rls on,off`, one run each) three in flight kept up with 15,986/s
    /// instead of 12,998/s and cost more at low rates: at 1,000/s each
    /// change got its own round, Postgres used 4.7 instead of 3.3 CPU-s per 5 s, and p50
    /// rose from 7.6 to 8.9 ms. Latency is the target still missed.
    const IN_FLIGHT: usize = 1;

    async fn publication_ready(&self) -> Result<bool, tokio_postgres::Error> {
        self.0.publication_exists().await
    }

    fn missing_publication_hint(&self) -> &'static str {
        "create it (create publication … for table …)"
    }

    fn on_streaming(&self) {
        self.0.stream_up();
    }

    fn on_lost(&self) {
        self.0.stream_down();
    }

    fn on_relation(&self, relation: &Relation) {
        self.0.relation_seen(relation);
    }

    async fn on_changes(&self, batch: &Batch) {
        self.1.changes(batch).await;
    }
}

/// Row changes published on this node reach its Postgres Changes subscribers here
/// (streamed by this node, or by the cluster's leader and relayed).
pub struct ChangeFeed(pub Arc<PgChanges>);

impl ChangeConsumer for ChangeFeed {
    fn deliver<'a>(&'a self, batch: &'a Batch) -> Delivery<'a> {
        Box::pin(async move {
            dispatch::deliver(&self.0, &batch.changes, &batch.commit_times(), &batch.xids()).await;
        })
    }

    fn stream_up(&self) {
        self.0.stream_up();
    }

    fn stream_down(&self) {
        self.0.stream_down();
    }

    fn relation_changed(&self, relation: &Relation) {
        self.0.relation_seen(relation);
    }
}
