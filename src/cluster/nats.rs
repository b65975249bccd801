//! The NATS engine: core publish/subscribe (at most once, like Redis pub/sub) through one
//! `async-nats` client, which reconnects and resubscribes by itself. Channel names become
//! subjects by escaping every byte NATS gives a meaning to (`.`, `*`, `>`, whitespace), so
//! any topic name maps to one subject and back to no other.
//!
//! NATS does not tell how many subscribers a message reached, so
//! [`Engine::publish_counted`] answers `None` and the broker bounds its waits otherwise.
//!
//! The shared public history is kept in JetStream ([`super::jetstream`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use ahash::AHashMap;
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::engine::{Engine, HistoryRead, HistorySettings, Incoming, Outgoing};
use super::jetstream::{self, History};

/// Messages waiting to be published; beyond this they are dropped (and counted).
const PUBLISH_QUEUE: usize = 65_536;
/// Received messages waiting for local delivery.
const INCOMING_QUEUE: usize = 65_536;
/// Appended messages whose acknowledgements are awaited together, off the publishing task.
const ACK_BATCH: usize = 512;
/// Messages the client buffers per subscription before it reports a slow consumer.
const SUBSCRIPTION_BUFFER: usize = 65_536;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

enum Control {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// A link to a NATS server.
pub struct Nats {
    publish: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    connected: Arc<AtomicBool>,
    history: Option<Arc<History>>,
}

impl Nats {
    /// Starts the link to `url` (`nats://host:port`), keeping the shared public history
    /// when `history` is given; the messages of subscribed channels arrive on the returned
    /// receiver. A server that is down at start is retried in the background, like a lost
    /// one.
    pub fn start(url: &str, history: Option<&HistorySettings>) -> Result<(Nats, mpsc::Receiver<Incoming>), String> {
        let address: async_nats::ServerAddr = url.parse().map_err(|e| format!("CLUSTER_URL: {e}"))?;
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        let history = history.map(|settings| Arc::new(History::new(settings.clone())));
        tokio::spawn(run(
            address,
            publish_rx,
            control_rx,
            incoming,
            connected.clone(),
            history.clone(),
        ));
        Ok((
            Nats {
                publish,
                control,
                connected,
                history,
            },
            incoming_rx,
        ))
    }
}

impl Engine for Nats {
    fn publish(&self, channel: String, payload: Bytes) -> bool {
        self.publish.try_send(Outgoing::Publish(channel, payload, None)).is_ok()
    }

    fn publish_kept(&self, history: String, channel: String, payload: Bytes) -> bool {
        self.publish.try_send(Outgoing::Kept(history, channel, payload)).is_ok()
    }

    fn history(&self, history: String) -> HistoryRead<'_> {
        Box::pin(async move {
            match &self.history {
                // Not waited out: the join falls back to this node's memory at once.
                Some(_) if !self.connected() => Err("the NATS link is down".into()),
                Some(kept) => kept.read(&history).await,
                None => Err("no history is kept (REPLAY_PUBLIC is off)".into()),
            }
        })
    }

    fn keeps_history(&self) -> bool {
        self.history.as_ref().is_some_and(|h| h.kept())
    }

    fn publish_counted(&self, channel: &str, payload: Bytes) -> oneshot::Receiver<Option<usize>> {
        let (count, counted) = oneshot::channel();
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
        let _ = self.control.send(Control::Subscribe(channel.to_owned(), done));
        confirmed
    }

    fn unsubscribe(&self, channel: &str) {
        let _ = self.control.send(Control::Unsubscribe(channel.to_owned()));
    }

    fn counts_receivers(&self) -> bool {
        false
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

/// `channel` as a NATS subject: bytes outside `[A-Za-z0-9_:-]` become `%XX` (so `%` is
/// escaped too and no two channels share a subject).
pub fn subject(channel: &str) -> String {
    let mut out = String::with_capacity(channel.len() + 8);
    for b in channel.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Connects, then serves publishing and subscription changes until the server stops.
async fn run(
    address: async_nats::ServerAddr,
    publish: mpsc::Receiver<Outgoing>,
    mut control: mpsc::UnboundedReceiver<Control>,
    incoming: mpsc::Sender<Incoming>,
    connected: Arc<AtomicBool>,
    history: Option<Arc<History>>,
) {
    let events = incoming.clone();
    let flag = connected.clone();
    let ever_connected = Arc::new(AtomicBool::new(false));
    let options = ConnectOptions::new()
        .name("realtime-rs")
        .retry_on_initial_connect()
        .connection_timeout(CONNECT_TIMEOUT)
        .subscription_capacity(SUBSCRIPTION_BUFFER)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| match attempts {
            // The first attempt (at start or right after a loss) goes at once.
            0 | 1 => Duration::ZERO,
            n => (Duration::from_millis(50) * 2u32.saturating_pow(n.min(8) as u32)).min(MAX_BACKOFF),
        })
        .event_callback(move |event| {
            let events = events.clone();
            let flag = flag.clone();
            let ever = ever_connected.clone();
            async move { on_event(event, &events, &flag, &ever).await }
        });
    let client = match options.connect(address).await {
        Ok(client) => client,
        Err(e) => {
            // Only a malformed option gets here (the first connection is retried).
            warn!(error = %e, "cluster engine: NATS client could not start; this node runs alone");
            return;
        }
    };
    if let Some(history) = &history {
        tokio::spawn(history.clone().set_up(client.clone(), connected.clone()));
    }
    tokio::spawn(publisher(client.clone(), publish, connected.clone(), history));
    // NATS acknowledges nothing, but serves each connection's commands in order: once a
    // probe published after a SUB comes back, the server has the SUB.
    let probe_subject = client.new_inbox();
    let mut probes = match client.subscribe(probe_subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, "cluster engine: NATS client stopped; this node runs alone");
            return;
        }
    };
    let mut confirming: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    let mut subscriptions: AHashMap<String, AbortHandle> = AHashMap::new();
    loop {
        tokio::select! {
            cmd = control.recv() => match cmd {
                None => return,
                Some(Control::Subscribe(channel, done)) => {
                    if !subscriptions.contains_key(&channel) {
                        match client.subscribe(subject(&channel)).await {
                            Ok(sub) => {
                                let task = tokio::spawn(forward(sub, incoming.clone()));
                                subscriptions.insert(channel, task.abort_handle());
                            }
                            Err(e) => {
                                // Unconfirmed: the broker goes on without, as with a lost link.
                                warn!(error = %e, %channel, "cluster engine: NATS subscribe failed");
                                continue;
                            }
                        }
                    }
                    if client.publish(probe_subject.clone(), Bytes::new()).await.is_ok() {
                        confirming.push_back(done);
                    }
                }
                Some(Control::Unsubscribe(channel)) => {
                    // Dropping the subscriber (with its task) unsubscribes.
                    if let Some(task) = subscriptions.remove(&channel) {
                        task.abort();
                    }
                }
            },
            probe = probes.next() => match probe {
                Some(_) => {
                    if let Some(done) = confirming.pop_front() {
                        let _ = done.send(());
                    }
                }
                None => return,
            },
        }
        // Probes lost with a connection never come back: their subscriptions count as
        // unconfirmed (the client subscribes them again on reconnect).
        if !connected.load(Ordering::Relaxed) {
            confirming.clear();
        }
    }
}

async fn on_event(event: Event, incoming: &mpsc::Sender<Incoming>, connected: &AtomicBool, ever: &AtomicBool) {
    match event {
        Event::Connected => {
            connected.store(true, Ordering::Relaxed);
            if ever.swap(true, Ordering::Relaxed) {
                // The client has sent every subscription again: what was published while
                // away is lost, so the broker exchanges state again.
                info!("cluster engine: back; topics subscribed again");
                let _ = incoming.send(Incoming::Resubscribed).await;
            } else {
                info!("cluster engine connected");
            }
        }
        Event::Disconnected => {
            connected.store(false, Ordering::Relaxed);
            warn!("cluster engine: NATS link lost; each node serves its own members until it is back");
        }
        Event::SlowConsumer(sid) => {
            warn!(sid, "cluster engine: NATS dropped messages for a slow subscription");
        }
        other => debug!(event = %other, "cluster engine: NATS event"),
    }
}

/// Publishes queued messages in order; a kept one is appended to the JetStream history
/// first, its acknowledgement awaited later with others (by another task, or before the
/// next barrier). While the link is down, messages are dropped (after a wait as long as a
/// connection attempt) rather than piling up in the client and arriving late. A barrier is
/// answered once the appends before it are acknowledged and a probe published after
/// everything before it comes back from the server (which serves a connection's messages
/// in order).
async fn publisher(
    client: Client,
    mut queue: mpsc::Receiver<Outgoing>,
    connected: Arc<AtomicBool>,
    history: Option<Arc<History>>,
) {
    let mut acks = Acks::default();
    let mut probe_subject = client.new_inbox();
    let mut probes = match client.subscribe(probe_subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, "cluster engine: NATS client stopped; nothing is published");
            return;
        }
    };
    let mut batch = Vec::with_capacity(512);
    while queue.recv_many(&mut batch, 512).await > 0 {
        if !connected.load(Ordering::Relaxed) && !reconnected(&connected).await {
            let messages = batch.iter().filter(|o| !matches!(o, Outgoing::Barrier(..))).count();
            crate::observability::metrics::cluster_dropped(messages);
            batch.clear();
            continue;
        }
        let mut sent = 0;
        for item in batch.drain(..) {
            match item {
                Outgoing::Kept(name, channel, payload) => {
                    if let Some(history) = &history {
                        acks.push(history.append(&name, payload.clone()).await);
                    }
                    match client.publish(subject(&channel), payload).await {
                        Ok(()) => sent += 1,
                        Err(e) => {
                            debug!(error = %e, %channel, "cluster engine: NATS publish failed");
                            crate::observability::metrics::cluster_dropped(1);
                        }
                    }
                }
                Outgoing::Publish(channel, payload, count) => match client.publish(subject(&channel), payload).await {
                    Ok(()) => {
                        sent += 1;
                        if let Some(count) = count {
                            let _ = count.send(None);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, %channel, "cluster engine: NATS publish failed");
                        crate::observability::metrics::cluster_dropped(1);
                    }
                },
                Outgoing::Barrier(done) => {
                    if tokio::time::timeout(CONNECT_TIMEOUT, acks.all()).await.is_err() {
                        warn!("cluster engine: JetStream did not acknowledge kept messages in time");
                    }
                    if client.publish(probe_subject.clone(), Bytes::new()).await.is_err() {
                        continue;
                    }
                    match tokio::time::timeout(CONNECT_TIMEOUT, probes.next()).await {
                        Ok(Some(_)) => {
                            let _ = done.send(());
                        }
                        // A probe lost with the connection: later ones must not be
                        // mistaken for it, so start over on a fresh inbox.
                        _ => {
                            warn!("cluster engine: NATS did not echo a probe in time");
                            let fresh_subject = client.new_inbox();
                            if let Ok(fresh) = client.subscribe(fresh_subject.clone()).await {
                                probes = fresh;
                                probe_subject = fresh_subject;
                            }
                        }
                    }
                }
            }
        }
        crate::observability::metrics::cluster_published(sent);
        // Nothing else queued: the acknowledgements so far are awaited aside.
        if queue.is_empty() {
            acks.aside();
        }
    }
}

/// Acknowledgements of appended messages not awaited yet, and the tasks awaiting others.
#[derive(Default)]
struct Acks {
    pending: Vec<jetstream::Ack>,
    settling: Vec<tokio::task::JoinHandle<()>>,
}

impl Acks {
    fn push(&mut self, ack: Option<jetstream::Ack>) {
        self.pending.extend(ack);
        if self.pending.len() >= ACK_BATCH {
            self.aside();
        }
    }

    /// Awaits the pending ones on a task of their own.
    fn aside(&mut self) {
        if !self.pending.is_empty() {
            self.settling.retain(|task| !task.is_finished());
            self.settling
                .push(tokio::spawn(jetstream::settle(std::mem::take(&mut self.pending))));
        }
    }

    /// Completes once every append so far is acknowledged (or failed, logged).
    async fn all(&mut self) {
        jetstream::settle(std::mem::take(&mut self.pending)).await;
        for task in self.settling.drain(..) {
            let _ = task.await;
        }
    }
}

/// Waits (at most [`CONNECT_TIMEOUT`], like a Redis connection attempt) for the link to be
/// up; true when it is.
async fn reconnected(connected: &AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if connected.load(Ordering::Relaxed) {
            return true;
        }
    }
    false
}

/// Hands a subscription's messages to the broker.
async fn forward(mut sub: async_nats::Subscriber, incoming: mpsc::Sender<Incoming>) {
    while let Some(msg) = sub.next().await {
        crate::observability::metrics::cluster_received(1);
        if incoming.send(Incoming::Message(msg.payload)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_escape_what_nats_reads_as_syntax() {
        assert_eq!(subject("realtime:topic:public:room-1"), "realtime:topic:public:room-1");
        assert_eq!(subject("ns:topic:public:a.b *>"), "ns:topic:public:a%2Eb%20%2A%3E");
        // `%` itself is escaped, so an escaped-looking name does not collide.
        assert_ne!(subject("x:a%2Eb"), subject("x:a.b"));
        assert_eq!(subject("x:é"), "x:%C3%A9");
    }
}
