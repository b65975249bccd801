//! Postgres Changes: stream logical replication (the `wal` crate), match each change to
//! channels' bindings, enforce Row Level Security per subscriber, deliver
//! `postgres_changes` frames. Never sees pgoutput bytes or sockets.
//!
//! * [`subscribe`]: bindings → subscriptions checked against the [`catalog`].
//! * [`registry`]: which channel wants which table.
//! * [`replication`]: this capability as a sink of the replication driver.
//! * [`dispatch`]: filters ([`filter`]), RLS ([`rls`]), payloads ([`payload`]), fan-out.

pub mod catalog;
mod diagnose;
pub mod dispatch;
pub mod filter;
pub mod group_equality;
pub mod payload;
pub mod policy;
pub mod pool;
pub mod registry;
pub mod replication;
pub mod rls;
pub mod rls_shared;
mod row_key;
mod sql_tokens;
pub mod subscribe;
mod turns;
pub mod visibility;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use realtime_protocol::{encode, errors};
use tracing::{info, warn};

use crate::fanout::ChannelId;
use crate::observability::state::{StreamState, PG_CHANGES as STATS};
use catalog::Catalog;
use pool::Pool;
use registry::{ChannelSubs, Registry};
use subscribe::SubscribeError;

/// The Postgres Changes service, present when `DATABASE_URL` is set.
pub struct PgChanges {
    config: tokio_postgres::Config,
    publication: String,
    slot: String,
    pool: Arc<Pool>,
    catalog: Catalog,
    registry: Registry,
    /// Plans of the one-statement-per-role RLS check.
    shared_rls: rls_shared::SharedRls,
    /// Overlapping delivery rounds push in commit order.
    turns: turns::Turns,
    /// The last round's security state: the next round's checks start under it (and
    /// count only if the round's own state agrees).
    security_hint: Mutex<Option<Arc<catalog::Security>>>,
    /// See [`Settings::rls_batch`].
    rls_batch: bool,
    /// See [`Settings::max_record_bytes`].
    max_record_bytes: usize,
    /// See [`Settings::max_in_values`].
    max_in_values: usize,
    /// The replication stream is up.
    connected: AtomicBool,
    /// Subscribers were told the database is gone; tell them when it is back.
    outage: AtomicBool,
}

/// Settings of the service.
pub struct Settings<'a> {
    /// `DATABASE_URL`.
    pub database_url: &'a str,
    /// Publication to stream.
    pub publication: &'a str,
    /// Replication slot name.
    pub slot: &'a str,
    /// SQL connections for catalog reads and RLS checks.
    pub pool_size: usize,
    /// Check RLS for many rows per statement (`POSTGRES_CHANGES_RLS_BATCH`); false: one
    /// statement per (subscriber, row).
    pub rls_batch: bool,
    /// Changes larger than this keep only values of at most 64 bytes (`MAX_RECORD_BYTES`).
    pub max_record_bytes: usize,
    /// Most values of an `in` filter (`MAX_IN_FILTER_VALUES`).
    pub max_in_values: usize,
}

impl PgChanges {
    /// Parses the settings; [`replication::spawn`] then starts streaming.
    pub fn start(settings: Settings<'_>) -> Result<Arc<PgChanges>, String> {
        let config: tokio_postgres::Config = settings
            .database_url
            .parse()
            .map_err(|e| format!("DATABASE_URL: {e}"))?;
        let pool = Arc::new(Pool::new(config.clone(), settings.pool_size));
        let pg = Arc::new(PgChanges {
            config,
            publication: settings.publication.to_owned(),
            slot: settings.slot.to_owned(),
            catalog: Catalog::new(pool.clone()),
            pool,
            registry: Registry::default(),
            shared_rls: rls_shared::SharedRls::default(),
            turns: turns::Turns::default(),
            security_hint: Mutex::new(None),
            rls_batch: settings.rls_batch,
            max_record_bytes: settings.max_record_bytes,
            max_in_values: settings.max_in_values,
            connected: AtomicBool::new(false),
            outage: AtomicBool::new(false),
        });
        info!(
            publication = settings.publication,
            slot = settings.slot,
            "Postgres Changes enabled"
        );
        Ok(pg)
    }

    /// Registers a channel's bindings and resolves them in the background; the channel
    /// then gets `Subscribed to PostgreSQL` or the error, as a `system` push. Called again
    /// with new claims after a token refresh.
    pub fn subscribe(self: &Arc<Self>, entry: ChannelSubs) {
        let channel = entry.channel;
        self.registry.put(entry);
        let pg = self.clone();
        tokio::spawn(async move { pg.resolve(channel).await });
    }

    /// Registers a channel's bindings and waits until they are live (the join's
    /// `postgres_changes_options.wait`): compiled against the catalog and the stream up,
    /// so a change committed after this returns `Ok` is delivered. A refusal (table not
    /// published, bad filter, unknown role) is returned at once as Supabase's text; a
    /// database that cannot be reached is retried until `wait` runs out. On error the
    /// bindings are removed again.
    pub async fn subscribe_waiting(self: &Arc<Self>, entry: ChannelSubs, wait: Duration) -> Result<(), String> {
        let channel = entry.channel;
        self.registry.put(entry);
        let live = async {
            loop {
                let Some(entry) = self.registry.get(channel) else {
                    return Err(errors::PG_UNABLE_TO_CONNECT.to_owned());
                };
                let resolved = subscribe::resolve(
                    &self.catalog,
                    &self.publication,
                    &entry.bindings,
                    &entry.role,
                    self.max_in_values,
                )
                .await;
                match resolved {
                    Ok(subs) => {
                        self.registry.update(channel, subs);
                        return match self.wait_streaming(channel).await {
                            Streaming::Up => Ok(()),
                            Streaming::Failed(message) => Err(message),
                            Streaming::Gone => Err(errors::PG_UNABLE_TO_CONNECT.to_owned()),
                        };
                    }
                    Err(SubscribeError::Rejected(message)) => return Err(message),
                    Err(SubscribeError::Database(e)) => {
                        warn!(channel, error = %e, "cannot subscribe now; retrying while the join waits");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(wait, live).await.unwrap_or_else(|_| {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            Err(errors::pg_wait_timeout(ms))
        });
        if let Err(message) = &outcome {
            info!(channel, %message, "postgres_changes join refused (wait)");
            self.registry.remove(channel);
        }
        outcome
    }

    /// Waits until the replication stream is up: "Subscribed" promises that the changes
    /// committed from now on will come, true only once the stream (and so the slot) is
    /// up. Ends early when the channel leaves or the stream has stopped for good.
    async fn wait_streaming(&self, channel: ChannelId) -> Streaming {
        loop {
            if self.connected.load(std::sync::atomic::Ordering::SeqCst) {
                return Streaming::Up;
            }
            if STATS.state() == StreamState::Failed {
                let reason = STATS.error().unwrap_or_default();
                return Streaming::Failed(format!("Realtime cannot stream changes: {reason}"));
            }
            if self.registry.get(channel).is_none() {
                return Streaming::Gone;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the configured publication exists.
    async fn publication_exists(&self) -> Result<bool, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        let row = conn
            .query_one(
                "select exists(select 1 from pg_publication where pubname = $1)",
                &[&self.publication],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The connection settings (`DATABASE_URL`).
    pub fn db_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The SQL pool (also used for private-channel authorization).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQL pool, shared (for background writers).
    pub fn shared_pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// The channel left.
    pub fn unsubscribe(&self, channel: ChannelId) {
        self.registry.remove(channel);
    }

    async fn resolve(self: Arc<Self>, channel: ChannelId) {
        let mut delay = Duration::from_secs(5);
        loop {
            let Some(entry) = self.registry.get(channel) else {
                return;
            };
            match subscribe::resolve(
                &self.catalog,
                &self.publication,
                &entry.bindings,
                &entry.role,
                self.max_in_values,
            )
            .await
            {
                Ok(subs) => {
                    if !self.registry.update(channel, subs) {
                        return;
                    }
                    if !self.connected.load(std::sync::atomic::Ordering::SeqCst) {
                        // A stream that cannot start at all should say why, not stay silent.
                        if let Some(message) = diagnose::wal_level(&self.catalog).await {
                            system(&entry, false, &message);
                        }
                    }
                    match self.wait_streaming(channel).await {
                        Streaming::Up => system(&entry, true, errors::PG_SUBSCRIBED),
                        Streaming::Failed(message) => system(&entry, false, &message),
                        Streaming::Gone => {}
                    }
                    return;
                }
                Err(SubscribeError::Rejected(message)) => {
                    info!(channel, %message, "postgres_changes subscription refused");
                    system(&entry, false, &message);
                    return;
                }
                Err(SubscribeError::Database(e)) => {
                    // Supabase keeps retrying while the database is unreachable.
                    warn!(channel, error = %e, "cannot subscribe now; retrying");
                    system(&entry, false, errors::PG_UNABLE_TO_CONNECT);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The last round's security state (a prediction only: see `security_hint`).
    fn security_hint(&self) -> Option<Arc<catalog::Security>> {
        crate::sync::lock(&self.security_hint, "security hint").clone()
    }

    fn set_security_hint(&self, security: Arc<catalog::Security>) {
        *crate::sync::lock(&self.security_hint, "security hint") = Some(security);
    }

    /// The stream is up (here, or on the cluster's leader): subscriptions waiting for it
    /// are told; after an outage every channel is resolved again and told again.
    pub fn stream_up(self: &Arc<Self>) {
        self.connected.store(true, Ordering::SeqCst);
        if self.outage.swap(false, Ordering::SeqCst) {
            self.resubscribe_all();
        }
    }

    /// The stream was lost: subscribers are told once.
    pub fn stream_down(&self) {
        if self.connected.swap(false, Ordering::SeqCst) {
            self.outage.store(true, Ordering::SeqCst);
            self.notify_all(false, errors::PG_UNABLE_TO_CONNECT);
        }
    }

    /// Resolves every channel again (after the stream reconnected).
    fn resubscribe_all(self: &Arc<Self>) {
        for entry in self.registry.all() {
            let pg = self.clone();
            tokio::spawn(async move { pg.resolve(entry.channel).await });
        }
    }

    /// A Relation message: Postgres sends one before a table's first change in a session
    /// and after its shape changed. When the columns differ from what we cached, the
    /// catalog entry and the subscriptions compiled against it (column positions) are
    /// rebuilt.
    pub fn relation_seen(self: &Arc<Self>, relation: &realtime_wal::pgoutput::Relation) {
        let Some(cached) = self.catalog.cached(relation.id) else {
            return;
        };
        let same = cached.columns.len() == relation.columns.len()
            && cached
                .columns
                .iter()
                .zip(&relation.columns)
                .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid);
        if same {
            return;
        }
        info!(table = %cached.name, "table shape changed: re-reading the catalog and re-subscribing");
        self.catalog.invalidate(relation.id);
        for entry in &self.registry.for_table(relation.id).channels {
            let (pg, channel) = (self.clone(), entry.channel);
            tokio::spawn(async move { pg.resolve(channel).await });
        }
    }

    /// Pushes a `system` message to every subscribed channel.
    fn notify_all(&self, ok: bool, message: &str) {
        for entry in self.registry.all() {
            system(&entry, ok, message);
        }
    }
}

/// Where the replication stream is, for a subscription waiting on it.
enum Streaming {
    /// Streaming: changes committed from now on will be delivered.
    Up,
    /// Stopped for good (the driver's error policy): the reason, for the subscriber.
    Failed(String),
    /// The channel left meanwhile.
    Gone,
}

fn system(entry: &ChannelSubs, ok: bool, message: &str) {
    let sub = entry.topic.strip_prefix("realtime:").unwrap_or(&entry.topic);
    let payload = encode::system_payload(Some(sub), "postgres_changes", ok, message);
    crate::observability::metrics::out(crate::observability::metrics::Out::System, 1);
    entry.outbox.push(encode::push(
        entry.vsn,
        entry.join_ref.as_deref(),
        &entry.topic,
        "system",
        &payload,
    ));
}
