//! The shared public history on NATS: one JetStream stream per namespace, one subject per
//! topic's history, at most [`HISTORY_DEPTH`] messages per subject, each kept for the
//! retention. A kept message is published to JetStream just before its core publish, on
//! the same connection (the acknowledgement is awaited off the publishing path); a
//! replaying join reads the topic's subject through a short-lived consumer.
//!
//! A server started without JetStream (`-js`) cannot keep it: a warning says so once, and
//! the broker asks every node for its memory history instead ([`super::history`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishAckFuture};
use async_nats::jetstream::stream::{Config, DiscardPolicy};
use async_nats::jetstream::Context;
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::engine::{HistorySettings, HISTORY_DEPTH};
use super::nats::subject;

/// A pending acknowledgement of an appended message.
pub type Ack = PublishAckFuture;

/// A JetStream request (stream setup, consumer, fetch) not answered within this failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Acknowledgements awaited at once; a publish beyond this is not kept (never waited on).
const ACKS_IN_FLIGHT: usize = 8_192;
/// A consumer left behind by a failed read goes after this.
const CONSUMER_IDLE: Duration = Duration::from_secs(10);
const MIN_SETUP_BACKOFF: Duration = Duration::from_millis(100);
const MAX_SETUP_BACKOFF: Duration = Duration::from_secs(30);
/// How often the stream's keeper looks at the link (it cannot await the client's events).
const LINK_POLL: Duration = Duration::from_millis(50);

/// The history stream of a namespace, as this node knows it.
pub struct History {
    settings: HistorySettings,
    /// The stream's name, also its subjects' prefix ([`stream_name`]).
    stream: String,
    /// Set once the stream exists.
    ready: OnceLock<Context>,
    /// The server has no JetStream: nothing is kept.
    unavailable: AtomicBool,
}

impl History {
    pub fn new(settings: HistorySettings) -> History {
        History {
            stream: stream_name(&settings.namespace),
            settings,
            ready: OnceLock::new(),
            unavailable: AtomicBool::new(false),
        }
    }

    /// The subject of the history named `history`: one token (escaped like a channel)
    /// under the stream's prefix.
    fn subject(&self, history: &str) -> String {
        format!("{}.{}", self.stream, subject(history))
    }

    /// Whether the history is kept, or will be once the stream is set up.
    pub fn kept(&self) -> bool {
        !self.unavailable.load(Ordering::Relaxed)
    }

    /// Creates (or updates) the stream once the client is connected, and again after each
    /// reconnection (a server restarted without its store lost it); retried with backoff
    /// until it works, given up when the server turns out to have no JetStream.
    pub async fn set_up(self: Arc<Self>, client: Client, connected: Arc<AtomicBool>) {
        let context = async_nats::jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .max_ack_inflight(ACKS_IN_FLIGHT)
            // A full window drops the append rather than stalling every publish behind it.
            .backpressure_on_inflight(false)
            .build(client);
        let name = self.stream.clone();
        let config = Config {
            name: name.clone(),
            subjects: vec![format!("{name}.*")],
            max_messages_per_subject: i64::try_from(HISTORY_DEPTH).unwrap_or(i64::MAX),
            discard: DiscardPolicy::Old,
            // Zero: kept until pushed out by newer messages.
            max_age: self.settings.retention,
            allow_direct: true,
            ..Default::default()
        };
        let mut backoff = MIN_SETUP_BACKOFF;
        loop {
            link(&connected, true).await;
            match context.create_or_update_stream(config.clone()).await {
                Ok(_) => {
                    match self.ready.set(context.clone()) {
                        Ok(()) => info!(stream = %name, "cluster engine: public history kept in JetStream"),
                        Err(_) => {
                            debug!(stream = %name, "cluster engine: JetStream history stream checked after a reconnection")
                        }
                    }
                    backoff = MIN_SETUP_BACKOFF;
                    link(&connected, false).await;
                }
                Err(e) if e.kind() == CreateStreamErrorKind::JetStreamUnavailable => {
                    self.unavailable.store(true, Ordering::Relaxed);
                    warn!("cluster engine: the NATS server has no JetStream (start it with -js): REPLAY_PUBLIC history is gathered from the nodes' memory instead, and lost with the node a message was published on");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, stream = %name, retry_in = ?backoff, "cluster engine: cannot set up the JetStream history stream");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_SETUP_BACKOFF);
                }
            }
        }
    }

    /// Appends `payload` to the history `history`; the acknowledgement to await, or
    /// `None` when it is not kept (no stream yet, full window: logged).
    pub async fn append(&self, history: &str, payload: Bytes) -> Option<Ack> {
        let context = self.ready.get().filter(|_| self.kept())?;
        match context.publish(self.subject(history), payload).await {
            Ok(ack) => Some(ack),
            Err(e) => {
                debug!(error = %e, %history, "cluster engine: message not kept in the JetStream history");
                crate::observability::metrics::cluster_dropped(1);
                None
            }
        }
    }

    /// The newest messages of the history `history`, oldest first.
    pub async fn read(&self, history: &str) -> Result<Vec<Bytes>, String> {
        let Some(context) = self.ready.get() else {
            return Err("the JetStream history stream is not set up yet".into());
        };
        let read = async {
            let stream = context
                .get_stream_no_info(&self.stream)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: self.subject(history),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: CONSUMER_IDLE,
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            // No wait: what the subject holds now, then the end.
            let mut batch = consumer
                .fetch()
                .max_messages(HISTORY_DEPTH)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut entries = Vec::new();
            while let Some(message) = batch.next().await {
                entries.push(message.map_err(|e| e.to_string())?.message.payload);
            }
            let consumer_name = consumer.cached_info().name.clone();
            // Not waited for: it goes by itself after CONSUMER_IDLE anyway.
            tokio::spawn(async move {
                if let Err(e) = stream.delete_consumer(&consumer_name).await {
                    debug!(error = %e, "cluster engine: history consumer left to expire");
                }
            });
            Ok(entries)
        };
        tokio::time::timeout(REQUEST_TIMEOUT * 2, read)
            .await
            .map_err(|_| "JetStream did not answer in time".to_owned())?
    }
}

/// The history stream of `namespace`: hex-encoded, since stream names refuse what a
/// namespace may hold (`.`, `*`, `>`, whitespace).
fn stream_name(namespace: &str) -> String {
    let mut name = String::from("realtime-history-");
    for b in namespace.bytes() {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// Waits until the link is up (`true`) or down.
async fn link(connected: &AtomicBool, up: bool) {
    while connected.load(Ordering::Relaxed) != up {
        tokio::time::sleep(LINK_POLL).await;
    }
}

/// Awaits the acknowledgements of appended messages; those that fail are counted and
/// logged once for the lot.
pub async fn settle(acks: Vec<Ack>) {
    let mut failed = 0;
    let mut last_error = None;
    for ack in acks {
        if let Err(e) = ack.await {
            failed += 1;
            last_error = Some(e.to_string());
        }
    }
    if let Some(error) = last_error {
        crate::observability::metrics::cluster_dropped(failed);
        warn!(messages = failed, %error, "cluster engine: JetStream did not keep messages in the history");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_and_topic_history_has_its_own_subject() {
        let history = |namespace: &str| {
            History::new(HistorySettings {
                namespace: namespace.into(),
                retention: Duration::ZERO,
            })
        };
        let h = history("realtime");
        assert_eq!(h.stream, "realtime-history-7265616c74696d65");
        assert_eq!(
            h.subject("realtime:history:public:realtime:a.b"),
            "realtime-history-7265616c74696d65.realtime:history:public:realtime:a%2Eb"
        );
        assert_ne!(stream_name("a.b"), stream_name("a_b"));
        assert_ne!(
            h.subject("realtime:history:public:realtime:room"),
            h.subject("realtime:history:private:realtime:room")
        );
    }
}
