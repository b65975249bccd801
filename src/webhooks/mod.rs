//! Webhooks out: `channel.occupied`, `channel.vacated`, `presence.join` and
//! `presence.leave`, POSTed as signed batches (`{"events":[...]}`, [`sign`]) to every
//! `WEBHOOK_URL`.
//!
//! An observer, never on the fan-out's hot path: the publish path and the presence hub
//! hand events to a bounded channel with `try_send` (full: the event is dropped and
//! counted); the batcher task collects WEBHOOK_BATCH_MS worth, cancels presence flapping
//! (a join and a leave of the same key in one batch), and pushes the batch to each
//! receiver's [`queue`]; one [`deliver`] task per receiver sends them in order, with
//! retries. Events of one topic therefore reach a receiver in the order they happened.
//!
//! Once per cluster: presence events come only from the node that owns the entry (its
//! sockets' tracks and its server-set entries; other nodes' changes and a dead node's
//! leaves are not reported). Channel occupancy is per node: a topic with members on two
//! nodes is reported occupied by each (see README).

pub mod deliver;
pub mod queue;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::fanout::TopicKey;
use crate::presence::state::Diff;
use queue::Queue;

/// Webhook settings, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Receivers.
    pub urls: Vec<Uri>,
    /// HMAC key.
    pub secret: String,
    /// Topic patterns (`team:*` a prefix, else exact); empty: every topic.
    pub topics: Vec<String>,
    /// Retries per batch after the first attempt.
    pub max_retries: u32,
    /// Batches queued per receiver.
    pub queue: usize,
    /// How long a batch collects events.
    pub batch: Duration,
}

impl Settings {
    /// Reads the `WEBHOOK_*` settings; `Ok(None)` without `WEBHOOK_URL`.
    pub fn from_config(c: &crate::config::Config) -> Result<Option<Settings>, String> {
        let Some(urls) = c.webhook_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let urls = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| match u.parse::<Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Ok(uri),
                _ => Err(format!("WEBHOOK_URL: {u} is not an http://host[:port]/path URL")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secret = c
            .webhook_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("WEBHOOK_URL is set but WEBHOOK_SECRET is not: receivers could not verify a batch")?;
        let topics = c
            .webhook_topics
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Some(Settings {
            urls,
            secret,
            topics,
            max_retries: c.webhook_max_retries,
            queue: c.webhook_queue,
            batch: Duration::from_millis(c.webhook_batch_ms.max(1)),
        }))
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Occupied,
    Vacated,
    Join,
    Leave,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Occupied => "channel.occupied",
            Kind::Vacated => "channel.vacated",
            Kind::Join => "presence.join",
            Kind::Leave => "presence.leave",
        }
    }
}

/// One event as observed, serialized by the batcher.
#[derive(Debug)]
struct Event {
    kind: Kind,
    topic: TopicKey,
    /// Presence key and meta JSON (presence events).
    presence: Option<(String, Arc<str>)>,
    at_ms: i64,
}

impl Event {
    fn to_json(&self) -> Value {
        let mut e = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": self.kind.name(),
            "topic": self.topic.sub_topic(),
            "private": self.topic.private,
            "timestamp": self.at_ms,
        });
        if let (Some((key, meta)), Some(obj)) = (&self.presence, e.as_object_mut()) {
            obj.insert("key".to_owned(), Value::String(key.clone()));
            obj.insert("meta".to_owned(), serde_json::from_str(meta).unwrap_or(Value::Null));
        }
        e
    }
}

/// Events in flight from the observers to the batcher.
const CHANNEL: usize = 65_536;

/// The observer side: cheap, never waits.
pub struct Webhooks {
    tx: mpsc::Sender<Event>,
    topics: Vec<String>,
}

impl Webhooks {
    /// Starts the batcher and one delivery task per receiver.
    pub fn start(settings: Settings) -> Arc<Webhooks> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let secret: Arc<[u8]> = Arc::from(settings.secret.as_bytes());
        let mut queues = Vec::new();
        for url in &settings.urls {
            let q = Queue::new(settings.queue);
            queues.push(q.clone());
            let to = deliver::Receiver {
                url: url.clone(),
                secret: secret.clone(),
                max_retries: settings.max_retries,
            };
            tokio::spawn(deliver::run(to, q));
        }
        info!(receivers = settings.urls.len(), topics = ?settings.topics, "webhooks on");
        tokio::spawn(batcher(rx, queues, settings.batch));
        Arc::new(Webhooks {
            tx,
            topics: settings.topics,
        })
    }

    fn wanted(&self, key: &TopicKey) -> bool {
        let name = key.sub_topic();
        self.topics.is_empty()
            || self.topics.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p,
            })
    }

    fn emit(&self, e: Event) {
        if let Err(e) = self.tx.try_send(e) {
            crate::observability::metrics::webhook_events_dropped(1);
            warn!(error = %e, "webhook event dropped: the batcher is behind");
        }
    }

    /// A topic got its first member on this node.
    pub fn occupied(&self, key: &TopicKey) {
        self.channel(Kind::Occupied, key);
    }

    /// A topic lost its last member on this node.
    pub fn vacated(&self, key: &TopicKey) {
        self.channel(Kind::Vacated, key);
    }

    fn channel(&self, kind: Kind, key: &TopicKey) {
        if self.wanted(key) {
            self.emit(Event {
                kind,
                topic: key.clone(),
                presence: None,
                at_ms: crate::clock::now_ms(),
            });
        }
    }

    /// A change to this node's own presence entries. A meta update (leave and join of
    /// the same key in one diff) is no join or leave and cancels out in the batch.
    pub fn presence(&self, key: &TopicKey, diff: &Diff) {
        if !self.wanted(key) {
            return;
        }
        let at_ms = crate::clock::now_ms();
        let events = diff
            .leaves
            .iter()
            .map(|l| (Kind::Leave, l))
            .chain(diff.joins.iter().map(|j| (Kind::Join, j)));
        for (kind, (k, meta)) in events {
            self.emit(Event {
                kind,
                topic: key.clone(),
                presence: Some((k.clone(), meta.json.clone())),
                at_ms,
            });
        }
    }
}

/// Collects events for `window` after the first, coalesces, serializes once and queues
/// the batch for every receiver.
async fn batcher(mut rx: mpsc::Receiver<Event>, queues: Vec<Arc<Queue>>, window: Duration) {
    let mut events = Vec::new();
    while let Some(first) = rx.recv().await {
        events.push(first);
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            events.push(e);
        }
        let kept = coalesce(std::mem::take(&mut events));
        if kept.is_empty() {
            continue;
        }
        let body = json!({"events": kept.iter().map(Event::to_json).collect::<Vec<_>>()}).to_string();
        let body = bytes::Bytes::from(body);
        for q in &queues {
            if q.push(body.clone()) {
                crate::observability::metrics::webhook_batch_dropped("queue_full");
                warn!("webhook queue full: the oldest batch was dropped");
            }
        }
    }
}

/// Drops join/leave pairs of the same key of the same topic that follow each other in
/// the batch (flapping, a meta update): receivers see no change that did not last.
fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut kept: Vec<Option<Event>> = Vec::with_capacity(events.len());
    // (topic, key) → index in `kept` of its latest presence event still standing.
    let mut last: ahash::AHashMap<(TopicKey, String), usize> = ahash::AHashMap::new();
    for e in events {
        let Some((key, _)) = &e.presence else {
            kept.push(Some(e));
            continue;
        };
        let id = (e.topic.clone(), key.clone());
        if let Some(&i) = last.get(&id) {
            if kept[i].as_ref().is_some_and(|prev| prev.kind != e.kind) {
                kept[i] = None;
                last.remove(&id);
                continue;
            }
        }
        last.insert(id, kept.len());
        kept.push(Some(e));
    }
    kept.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, topic: &str, key: Option<&str>) -> Event {
        Event {
            kind,
            topic: TopicKey::new(topic, false),
            presence: key.map(|k| (k.to_owned(), Arc::from("{}"))),
            at_ms: 0,
        }
    }

    #[test]
    fn flapping_cancels_and_the_rest_keeps_its_order() {
        let out = coalesce(vec![
            ev(Kind::Occupied, "realtime:a", None),
            ev(Kind::Join, "realtime:a", Some("x")),
            ev(Kind::Join, "realtime:a", Some("y")),
            ev(Kind::Leave, "realtime:a", Some("x")),
            ev(Kind::Join, "realtime:b", Some("x")),
            ev(Kind::Leave, "realtime:a", Some("y")),
            ev(Kind::Join, "realtime:a", Some("y")),
        ]);
        let got: Vec<(Kind, &str, Option<&str>)> = out
            .iter()
            .map(|e| (e.kind, &*e.topic.topic, e.presence.as_ref().map(|p| p.0.as_str())))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Occupied, "realtime:a", None),
                (Kind::Join, "realtime:b", Some("x")),
                (Kind::Join, "realtime:a", Some("y")),
            ]
        );
    }
}
