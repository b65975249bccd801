//! Public broadcast history for `REPLAY_PUBLIC=true` (beyond Supabase, which replays only
//! private channels): every public broadcast from a client or REST gets an id (`meta.id`)
//! and is kept, so a client that reconnects with `replay: {since}` gets what it missed.
//!
//! * In memory, the newest [`RING`] messages of each topic. Publishing a message and a
//!   replaying join's "read history, reply, subscribe" hold the same per-topic lock, so a
//!   message is either in what the join replays or delivered to it live: never lost in
//!   between, never both.
//! * With a database, also in `realtime.rs_public_broadcasts`, written in batches by a
//!   background task (never on the publish path), so history survives restarts. A replay
//!   merges both by id.
//! * In a cluster, also in the engine, appended with each message's publish (see
//!   `crate::cluster`), so it survives the node it was published on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::{AHashMap, RandomState};
use bytes::Bytes;
use realtime_protocol::broadcast::map_with_meta;
use realtime_protocol::{BroadcastMessage, Encoding};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::fanout::TopicKey;
use crate::postgres_changes::pool::Pool;

/// Messages kept in memory per topic: Supabase replays at most 25.
pub const RING: usize = 25;
/// Bytes of payload kept in memory per topic; older messages are then only in the database.
const RING_BYTES: usize = 1 << 20;
/// Messages waiting to be written to the database; beyond this they are kept in memory only.
const STORE_QUEUE: usize = 65_536;
/// Rows per insert statement.
const STORE_BATCH: usize = 512;
const SHARDS: usize = 64;

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Its id (`meta.id`).
    pub id: Arc<str>,
    /// When it was stored, unix microseconds: replay's order (and `since`, in ms).
    pub at_us: i64,
    /// What it carries.
    pub body: StoredBody,
}

/// A stored message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredBody {
    /// A user broadcast: event, and JSON payload text or binary payload.
    User {
        event: String,
        payload: Result<Bytes, Bytes>,
    },
    /// A whole broadcast map as a client sent it (`{"type","event","payload"}`).
    Map(Bytes),
}

impl StoredBody {
    /// A user broadcast from stored columns: the JSON payload's text, else the bytes.
    pub fn user(event: String, json: Option<String>, binary: Option<Vec<u8>>) -> StoredBody {
        StoredBody::User {
            event,
            payload: match json {
                Some(json) => Ok(Bytes::from(json)),
                None => Err(Bytes::from(binary.unwrap_or_default())),
            },
        }
    }
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Stored>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, m: Stored) {
        self.bytes += size(&m);
        self.entries.push_back(m);
        while self.entries.len() > RING || (self.bytes > RING_BYTES && self.entries.len() > 1) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= size(&old);
            }
        }
    }
}

fn size(m: &Stored) -> usize {
    match &m.body {
        StoredBody::Map(b) => b.len(),
        StoredBody::User {
            event,
            payload: Ok(b) | Err(b),
        } => event.len() + b.len(),
    }
}

/// Topic → its newest messages.
type Shard = Mutex<AHashMap<Arc<str>, Ring>>;

/// The history of public topics.
pub struct History {
    shards: Box<[Shard]>,
    hasher: RandomState,
    store: Option<mpsc::Sender<(Arc<str>, Stored)>>,
    clock: Clock,
}

/// Wall-clock microseconds, strictly increasing within the process, so messages published
/// in the same microsecond still replay in publish order.
#[derive(Default)]
struct Clock(std::sync::atomic::AtomicI64);

impl Clock {
    fn next(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let prev = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
            .unwrap_or(now);
        now.max(prev + 1)
    }
}

impl History {
    /// A history kept in memory only.
    pub fn in_memory() -> History {
        History {
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            hasher: RandomState::new(),
            store: None,
            clock: Clock::default(),
        }
    }

    /// A history also written to `realtime.rs_public_broadcasts` through `pool`, keeping
    /// rows for `retention_hours` (0 = forever), checked every `retention_every`.
    pub fn with_database(pool: Arc<Pool>, retention_hours: u64, retention_every: Duration) -> History {
        let (tx, rx) = mpsc::channel(STORE_QUEUE);
        tokio::spawn(write_loop(pool, rx, retention_hours, retention_every));
        History {
            store: Some(tx),
            ..History::in_memory()
        }
    }

    fn shard(&self, topic: &str) -> &Shard {
        let i = (self.hasher.hash_one(topic) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Gives `msg` an id, keeps it, and hands the message with `meta.id` (and what was
    /// kept: id and time) to `deliver` while the topic's history is locked (see the module
    /// docs). Returns what `deliver` returns.
    pub fn record(
        &self,
        key: &TopicKey,
        msg: &BroadcastMessage,
        deliver: impl FnOnce(&BroadcastMessage, Option<(&str, i64)>) -> usize,
    ) -> usize {
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let meta = format!("{{\"id\":\"{id}\"}}");
        let (live, body) = match msg {
            BroadcastMessage::Map(map) => match map_with_meta(map, meta.as_bytes()) {
                Some(with_id) => (
                    BroadcastMessage::Map(Bytes::from(with_id)),
                    StoredBody::Map(map.clone()),
                ),
                // Not an object (Supabase relays any payload): relayed, not kept.
                None => return deliver(msg, None),
            },
            BroadcastMessage::User {
                event, encoding, body, ..
            } => (
                BroadcastMessage::User {
                    event: event.clone(),
                    metadata: Some(Bytes::from(meta)),
                    encoding: *encoding,
                    body: body.clone(),
                },
                StoredBody::User {
                    event: event.clone(),
                    payload: match encoding {
                        Encoding::Json => Ok(body.clone()),
                        Encoding::Binary => Err(body.clone()),
                    },
                },
            ),
        };
        let stored = Stored {
            id,
            at_us: self.clock.next(),
            body,
        };
        let delivered = {
            let mut shard = crate::sync::lock(self.shard(&key.topic), "broadcast history shard");
            shard.entry(key.topic.clone()).or_default().push(stored.clone());
            deliver(&live, Some((&stored.id, stored.at_us)))
        };
        if let Some(store) = &self.store {
            if store.try_send((key.topic.clone(), stored)).is_err() {
                warn!(topic = %key.topic, "public broadcast history: write queue full, message kept in memory only");
            }
        }
        delivered
    }

    /// Keeps a message another node of the cluster recorded (same id and time) and hands
    /// it to `deliver` under the topic's lock, like [`History::record`]: a join replaying
    /// on this node then has it either in its replay or live. Not written to the database
    /// (the origin does that).
    pub fn record_remote(&self, key: &TopicKey, stored: Stored, deliver: impl FnOnce() -> usize) -> usize {
        let mut shard = crate::sync::lock(self.shard(&key.topic), "broadcast history shard");
        shard.entry(key.topic.clone()).or_default().push(stored);
        deliver()
    }

    /// The in-memory messages of `topic` since `since_ms`, oldest first.
    pub fn recent(&self, topic: &str, since_ms: i64) -> Vec<Stored> {
        self.with_recent(topic, since_ms, |recent| recent)
    }

    /// Runs `f` with the in-memory messages of `topic` since `since_ms`, while no message
    /// can be published on it: what `f` subscribes sees every later message live.
    pub fn with_recent<R>(&self, topic: &str, since_ms: i64, f: impl FnOnce(Vec<Stored>) -> R) -> R {
        let shard = crate::sync::lock(self.shard(topic), "broadcast history shard");
        let recent = shard
            .get(topic)
            .map(|r| {
                r.entries
                    .iter()
                    .filter(|m| m.at_us >= since_ms.saturating_mul(1000))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        f(recent)
    }

    /// Forgets topics whose newest message is older than `cutoff_ms`.
    pub fn forget_older_than(&self, cutoff_ms: i64) {
        for shard in self.shards.iter() {
            {
                let mut shard = crate::sync::lock(shard, "broadcast history shard");
                shard.retain(|_, ring| {
                    ring.entries
                        .back()
                        .is_some_and(|m| m.at_us >= cutoff_ms.saturating_mul(1000))
                });
            }
        }
    }

    /// Reads the newest `limit` stored messages of `topic` since `since_ms`, oldest first.
    pub async fn load(
        pool: &Pool,
        topic: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Stored>, tokio_postgres::Error> {
        let conn = pool.checkout().await?;
        let rows = conn
            .query(
                "select id::text, at_us, message::text, coalesce(event, ''), payload::text, binary_payload \
                 from realtime.rs_public_broadcasts where topic = $1 and at_us >= $2 \
                 order by at_us desc limit $3",
                &[&topic, &since_ms.saturating_mul(1000), &limit],
            )
            .await?;
        let mut out: Vec<Stored> = rows
            .iter()
            .map(|r| Stored {
                id: Arc::from(r.get::<_, String>(0)),
                at_us: r.get(1),
                body: match r.get::<_, Option<String>>(2) {
                    Some(map) => StoredBody::Map(Bytes::from(map)),
                    None => StoredBody::user(r.get(3), r.get(4), r.get(5)),
                },
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}

/// Writes queued messages in batches; deletes expired rows and memory now and then.
async fn write_loop(
    pool: Arc<Pool>,
    mut rx: mpsc::Receiver<(Arc<str>, Stored)>,
    retention_hours: u64,
    retention_every: Duration,
) {
    let mut batch = Vec::with_capacity(STORE_BATCH);
    let mut retention = tokio::time::interval(retention_every.max(Duration::from_millis(100)));
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, STORE_BATCH) => {
                if n == 0 {
                    return;
                }
                if let Err(e) = insert(&pool, &batch).await {
                    warn!(error = %e, count = batch.len(), "public broadcast history: cannot store messages (kept in memory only)");
                }
                batch.clear();
            }
            _ = retention.tick(), if retention_hours > 0 => {
                let cutoff = now_ms() - i64::try_from(retention_hours * 3_600_000).unwrap_or(i64::MAX);
                match delete_before(&pool, cutoff).await {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "public broadcast history: old messages deleted"),
                    Err(e) => warn!(error = %e, "public broadcast history: retention failed; retrying later"),
                }
            }
        }
    }
}

async fn insert(pool: &Pool, batch: &[(Arc<str>, Stored)]) -> Result<(), tokio_postgres::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut topics = Vec::with_capacity(batch.len());
    let mut ats = Vec::with_capacity(batch.len());
    let mut maps = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    let mut binaries = Vec::with_capacity(batch.len());
    for (topic, m) in batch {
        ids.push(m.id.to_string());
        topics.push(topic.to_string());
        ats.push(m.at_us);
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        match &m.body {
            StoredBody::Map(map) => {
                maps.push(Some(text(map)));
                events.push(None);
                payloads.push(None);
                binaries.push(None);
            }
            StoredBody::User { event, payload } => {
                maps.push(None);
                events.push(Some(event.clone()));
                match payload {
                    Ok(json) => {
                        payloads.push(Some(text(json)));
                        binaries.push(None);
                    }
                    Err(bytes) => {
                        payloads.push(None);
                        binaries.push(Some(bytes.to_vec()));
                    }
                }
            }
        }
    }
    let conn = pool.checkout().await?;
    conn.execute(
        "insert into realtime.rs_public_broadcasts (id, topic, at_us, message, event, payload, binary_payload) \
         select id::uuid, topic, at_us, message::jsonb, event, payload::jsonb, binary_payload \
         from unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::bytea[]) \
           as t(id, topic, at_us, message, event, payload, binary_payload) \
         on conflict (id) do nothing",
        &[&ids, &topics, &ats, &maps, &events, &payloads, &binaries],
    )
    .await?;
    debug!(count = batch.len(), "public broadcast history: stored");
    Ok(())
}

async fn delete_before(pool: &Pool, cutoff_ms: i64) -> Result<u64, tokio_postgres::Error> {
    let conn = pool.checkout().await?;
    conn.execute(
        "delete from realtime.rs_public_broadcasts where at_us < $1",
        &[&cutoff_ms.saturating_mul(1000)],
    )
    .await
}
