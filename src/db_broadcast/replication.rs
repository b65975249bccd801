//! Broadcast from Database as a [`Sink`] of the replication driver (`crate::replication`),
//! which streams the slot and acknowledges a transaction's end only once its messages are
//! queued to the subscribers (fan-out never waits, so a batch is delivered as soon as it is
//! read). The slot is persistent: a message inserted while this server is down is
//! delivered when it is back; after a lost connection or a Postgres restart, what was
//! delivered is not delivered again.
//!
//! The slot is created only once the publication includes `realtime.messages`: a slot
//! created first would decode WAL written before the publication, and pgoutput fails on it
//! ("publication does not exist").

use std::sync::Arc;
use std::time::Duration;

use realtime_wal::change::{ChangeKind, RowChange};
use tracing::{trace, warn};

use super::row::{self, Skip};
use super::Source;
use crate::app::App;
use crate::fanout::TopicKey;
use crate::observability::state::DB_BROADCAST;
use crate::realtime_schema;
use crate::replication::{self, Batch, Sink};

/// Streams the slot until shutdown (or an error that needs an operator).
pub async fn run(app: Arc<App>, source: Source) {
    let settings = replication::Settings {
        db: source.db.clone(),
        slot: source.slot.clone(),
        publication: source.publication.clone(),
        application_name: "realtime-rs-messages".into(),
        start_delay: Duration::from_millis(app.config.replication_start_delay_ms),
        stats: &DB_BROADCAST,
        shutdown: app.shutdown.clone(),
    };
    replication::run(settings, Messages { app, source }).await;
}

/// The sink: each inserted row to its topic's subscribers.
struct Messages {
    app: Arc<App>,
    source: Source,
}

impl Sink for Messages {
    async fn publication_ready(&self) -> Result<bool, tokio_postgres::Error> {
        publication_ready(&self.source).await
    }

    fn missing_publication_hint(&self) -> &'static str {
        "Broadcast from Database needs the publication of realtime.messages (created by the realtime schema migrations)"
    }

    async fn on_changes(&self, batch: &Batch) {
        for change in &batch.changes {
            deliver(&self.app, change);
        }
    }
}

/// True when the publication exists and includes `realtime.messages`.
async fn publication_ready(source: &Source) -> Result<bool, tokio_postgres::Error> {
    let client = realtime_schema::connect(&source.db).await?;
    let row = client
        .query_one(
            "select exists (select 1 from pg_publication_tables \
             where pubname = $1 and schemaname = 'realtime' and tablename = 'messages')",
            &[&source.publication],
        )
        .await?;
    row.try_get(0)
}

/// Fans one inserted row out (never waits: full outboxes disconnect their own clients).
fn deliver(app: &App, change: &RowChange) {
    let relation = &change.relation;
    if change.kind != ChangeKind::Insert || relation.namespace != "realtime" || relation.name != "messages" {
        // The publication is ours (inserts of realtime.messages), but an operator may have
        // added tables or actions to it.
        trace!(table = %relation.name, "not a realtime.messages insert; ignored");
        return;
    }
    let Some(new) = change.new.as_ref() else {
        return;
    };
    let msg = match row::decode(relation, new) {
        Ok(m) => m,
        Err(Skip::NotBroadcast) => return,
        Err(Skip::Invalid(why)) => {
            warn!(reason = %why, "realtime.messages row not delivered");
            return;
        }
    };
    let limit = app.config.max_payload_bytes();
    if msg.message.payload_len() > limit {
        warn!(id = %msg.id, topic = %msg.topic, size = msg.message.payload_len(), limit, reason = "payload_size", "database broadcast over MAX_PAYLOAD_SIZE_KB not delivered");
        crate::observability::limit_rejected("db_payload_size");
        return;
    }
    let key = TopicKey::new(&format!("realtime:{}", msg.topic), msg.private);
    let n = app.publish.stored(&key, &msg.message, &msg.id, None);
    trace!(id = %msg.id, topic = %msg.topic, private = msg.private, subscribers = n, "database broadcast delivered");
}
