//! The Redis (or Valkey) engine: `PUBLISH` through one multiplexed connection, pipelined
//! (every message queued while a round trip is in flight goes in the next one, in order),
//! and `SUBSCRIBE` on a dedicated pub/sub connection. Both reconnect with backoff; after a
//! reconnect every wanted channel is subscribed again.
//!
//! The shared public history is a stream per topic: a kept message is `XADD`ed (capped at
//! about [`HISTORY_DEPTH`], expiring with the retention) just before its `PUBLISH`, in the same
//! pipeline, so appending costs no round trip of its own; a replaying join reads it with
//! `XREVRANGE` on a third connection, so a read never waits behind a pipeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashSet;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::streams::{StreamMaxlen, StreamRangeReply};
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::engine::{Engine, HistoryRead, HistorySettings, Incoming, Outgoing, HISTORY_DEPTH};

/// Messages waiting to be published; beyond this they are dropped (and counted).
const PUBLISH_QUEUE: usize = 65_536;
/// Most messages per pipelined round trip.
const PIPELINE: usize = 512;
/// Received messages waiting for local delivery.
const INCOMING_QUEUE: usize = 65_536;
/// A connection attempt that takes longer has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pipeline not answered within this is lost (and the connection made again).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

enum Control {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// The field of a history stream entry holding the message.
const HISTORY_FIELD: &str = "m";

/// A link to one Redis server.
pub struct Redis {
    publish: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    connected: Arc<AtomicBool>,
    client: redis::Client,
    /// The connection history reads go through, made on the first read (and again after
    /// a failed one).
    reader: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    keeps_history: bool,
}

impl Redis {
    /// Starts the link to `url` (`redis://host:port[/db]`, `rediss://…`), keeping the
    /// shared public history when `history` is given; the messages of subscribed channels
    /// arrive on the returned receiver. Connecting happens in the background: a Redis that
    /// is down at start is retried like a lost one.
    pub fn start(url: &str, history: Option<&HistorySettings>) -> Result<(Redis, mpsc::Receiver<Incoming>), String> {
        let client = redis::Client::open(url).map_err(|e| format!("CLUSTER_URL: {e}"))?;
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        // Whole seconds, at least one; none when kept forever.
        let expiry = history
            .map(|h| h.retention.as_secs())
            .filter(|secs| *secs > 0)
            .map(|secs| i64::try_from(secs).unwrap_or(i64::MAX));
        tokio::spawn(publisher(client.clone(), publish_rx, expiry));
        tokio::spawn(subscriber(client.clone(), control_rx, incoming, connected.clone()));
        Ok((
            Redis {
                publish,
                control,
                connected,
                client,
                reader: tokio::sync::Mutex::new(None),
                keeps_history: history.is_some(),
            },
            incoming_rx,
        ))
    }

    /// The newest entries of the stream `key`, oldest first.
    async fn read_history(&self, key: &str) -> Result<Vec<Bytes>, String> {
        let mut conn = {
            let mut reader = self.reader.lock().await;
            match reader.as_ref() {
                Some(conn) => conn.clone(),
                None => {
                    let conn = connect(&self.client).await?;
                    *reader = Some(conn.clone());
                    conn
                }
            }
        };
        let reply: Result<StreamRangeReply, _> = conn.xrevrange_count(key, "+", "-", HISTORY_DEPTH).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // Made again on the next read (the error may be the connection's).
                *self.reader.lock().await = None;
                return Err(e.to_string());
            }
        };
        let mut entries = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids.into_iter().rev() {
            match entry.map.get(HISTORY_FIELD) {
                Some(redis::Value::BulkString(bytes)) => entries.push(Bytes::copy_from_slice(bytes)),
                _ => warn!(%key, id = %entry.id, "cluster engine: history entry without its message; skipped"),
            }
        }
        Ok(entries)
    }
}

impl Engine for Redis {
    fn publish(&self, channel: String, payload: Bytes) -> bool {
        self.publish.try_send(Outgoing::Publish(channel, payload, None)).is_ok()
    }

    fn publish_kept(&self, history: String, channel: String, payload: Bytes) -> bool {
        let item = match self.keeps_history {
            true => Outgoing::Kept(history, channel, payload),
            false => Outgoing::Publish(channel, payload, None),
        };
        self.publish.try_send(item).is_ok()
    }

    fn history(&self, history: String) -> HistoryRead<'_> {
        Box::pin(async move { self.read_history(&history).await })
    }

    fn keeps_history(&self) -> bool {
        self.keeps_history
    }

    fn publish_counted(&self, channel: &str, payload: Bytes) -> oneshot::Receiver<Option<usize>> {
        let (count, counted) = oneshot::channel();
        // A full queue drops the sender: the caller sees "no answer".
        let _ = self
            .publish
            .try_send(Outgoing::Publish(channel.to_owned(), payload, Some(count)));
        counted
    }

    fn handed_over(&self) -> oneshot::Receiver<()> {
        let (done, handed) = oneshot::channel();
        let _ = self.publish.try_send(Outgoing::Barrier(done));
        handed
    }

    fn subscribe(&self, channel: &str) -> oneshot::Receiver<()> {
        let (done, confirmed) = oneshot::channel();
        // A closed control channel means the process is shutting down: the receiver then
        // completes with an error, which callers treat as "not confirmed".
        let _ = self.control.send(Control::Subscribe(channel.to_owned(), done));
        confirmed
    }

    fn unsubscribe(&self, channel: &str) {
        let _ = self.control.send(Control::Unsubscribe(channel.to_owned()));
    }

    fn counts_receivers(&self) -> bool {
        true
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Publishes queued messages in order, one pipeline per round trip; kept ones are appended
/// to their history stream first, which expires `expiry` seconds after its last message.
/// While Redis is away the messages of a failed round trip are dropped: other nodes miss
/// them, this node's members already had them.
async fn publisher(client: redis::Client, mut queue: mpsc::Receiver<Outgoing>, expiry: Option<i64>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut batch = Vec::with_capacity(PIPELINE);
    let mut down_since: Option<tokio::time::Instant> = None;
    while queue.recv_many(&mut batch, PIPELINE).await > 0 {
        if conn.is_none() {
            match connect(&client).await {
                Ok(c) => {
                    if let Some(since) = down_since.take() {
                        info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "cluster engine: publishing again"
                        );
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    if down_since.is_none() {
                        warn!(error = %e, "cluster engine unreachable: messages are delivered on this node only until it is back");
                        down_since = Some(tokio::time::Instant::now());
                    }
                    crate::observability::metrics::cluster_dropped(batch.len());
                    batch.clear();
                    continue;
                }
            }
        }
        let mut pipe = redis::pipe();
        let mut counts = Vec::new();
        let mut barriers = Vec::new();
        // Streams whose expiry this pipeline sets already: once per stream per round trip.
        let mut expiring: AHashSet<String> = AHashSet::new();
        let mut n = 0;
        for item in batch.drain(..) {
            match item {
                Outgoing::Publish(channel, payload, count) => {
                    n += 1;
                    pipe.publish(channel, payload.as_ref());
                    match count {
                        Some(count) => counts.push(count),
                        None => {
                            pipe.ignore();
                        }
                    }
                }
                Outgoing::Kept(history, channel, payload) => {
                    n += 1;
                    // Before the PUBLISH: a join that subscribed and then reads the stream
                    // has the message in what it reads, or live (see the module docs of
                    // `cluster::mod`), never neither.
                    // Trimmed approximately (whole stream nodes, so up to ~100 entries
                    // stay; reads take the newest 25): measured 1.7× cheaper for Redis
                    // than exact trimming, which leaves holes in the node as large.
                    pipe.xadd_maxlen(
                        &history,
                        StreamMaxlen::Approx(HISTORY_DEPTH),
                        "*",
                        &[(HISTORY_FIELD, payload.as_ref())],
                    )
                    .ignore();
                    if let Some(secs) = expiry.filter(|_| !expiring.contains(&history)) {
                        pipe.expire(&history, secs).ignore();
                        expiring.insert(history.clone());
                    }
                    pipe.publish(channel, payload.as_ref()).ignore();
                }
                Outgoing::Barrier(done) => barriers.push(done),
            }
        }
        if let Some(c) = conn.as_mut() {
            // Only barriers: what came before them went in earlier pipelines, which Redis
            // has answered (this task waits for each).
            if n == 0 {
                for done in barriers {
                    let _ = done.send(());
                }
                continue;
            }
            match pipe.query_async::<Vec<usize>>(c).await {
                Ok(receivers) => {
                    for (count, n) in counts.into_iter().zip(receivers) {
                        let _ = count.send(Some(n));
                    }
                    // Answered only now: everything before them is with Redis.
                    for done in barriers {
                        let _ = done.send(());
                    }
                    crate::observability::metrics::cluster_published(n);
                }
                Err(e) => {
                    warn!(error = %e, messages = n, "cluster engine: publish failed; reconnecting");
                    crate::observability::metrics::cluster_dropped(n);
                    down_since.get_or_insert_with(tokio::time::Instant::now);
                    conn = None;
                }
            }
        }
    }
}

async fn connect(client: &redis::Client) -> Result<MultiplexedConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(mut c)) => {
            // The client's default (500 ms) would drop a pipeline over a short stall of
            // Redis (a fork for a snapshot, a slow command): wait as long as for a connection.
            c.set_response_timeout(RESPONSE_TIMEOUT);
            Ok(c)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connection timed out".into()),
    }
}

/// Owns the pub/sub connection: applies subscription changes, forwards messages, and
/// after a lost connection reconnects and subscribes every wanted channel again.
async fn subscriber(
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Control>,
    incoming: mpsc::Sender<Incoming>,
    connected: Arc<AtomicBool>,
) {
    let mut wanted: AHashSet<String> = AHashSet::new();
    // Subscriptions asked for while the link was down, confirmed once it is back.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = MIN_BACKOFF;
    let mut lost_once = false;
    loop {
        let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connection timed out".into(),
                };
                debug!(%error, ?backoff, "cluster engine: subscription link not up yet");
                // Keep taking subscription changes while away, so nothing waits on us.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        cmd = control.recv() => match cmd {
                            None => return,
                            Some(Control::Subscribe(channel, done)) => {
                                wanted.insert(channel);
                                waiting.push(done);
                            }
                            Some(Control::Unsubscribe(channel)) => {
                                wanted.remove(&channel);
                            }
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        if !wanted.is_empty() {
            let channels: Vec<&String> = wanted.iter().collect();
            if let Err(e) = sink.subscribe(channels).await {
                warn!(error = %e, "cluster engine: resubscribing failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        connected.store(true, Ordering::Relaxed);
        backoff = MIN_BACKOFF;
        if lost_once {
            info!(channels = wanted.len(), "cluster engine: back; topics subscribed again");
            if incoming.send(Incoming::Resubscribed).await.is_err() {
                return;
            }
        } else {
            info!("cluster engine connected");
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        let lost = serve(
            &mut sink,
            &mut stream,
            &mut control,
            &incoming,
            &mut wanted,
            &mut waiting,
        )
        .await;
        connected.store(false, Ordering::Relaxed);
        match lost {
            Lost::Shutdown => return,
            Lost::Connection(why) => {
                lost_once = true;
                warn!(reason = %why, "cluster engine: subscription link lost; each node serves its own members until it is back");
            }
        }
    }
}

enum Lost {
    Shutdown,
    Connection(String),
}

/// Runs one pub/sub connection until it fails or the server stops.
async fn serve(
    sink: &mut PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    control: &mut mpsc::UnboundedReceiver<Control>,
    incoming: &mpsc::Sender<Incoming>,
    wanted: &mut AHashSet<String>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Lost {
    loop {
        tokio::select! {
            cmd = control.recv() => match cmd {
                None => return Lost::Shutdown,
                Some(Control::Subscribe(channel, done)) => {
                    if wanted.insert(channel.clone()) {
                        if let Err(e) = sink.subscribe(&channel).await {
                            waiting.push(done);
                            return Lost::Connection(e.to_string());
                        }
                    }
                    let _ = done.send(());
                }
                Some(Control::Unsubscribe(channel)) => {
                    if wanted.remove(&channel) {
                        if let Err(e) = sink.unsubscribe(&channel).await {
                            return Lost::Connection(e.to_string());
                        }
                    }
                }
            },
            msg = stream.next() => match msg {
                None => return Lost::Connection("connection closed".into()),
                Some(msg) => {
                    crate::observability::metrics::cluster_received(1);
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if incoming.send(Incoming::Message(payload)).await.is_err() {
                        return Lost::Shutdown;
                    }
                }
            },
        }
    }
}
