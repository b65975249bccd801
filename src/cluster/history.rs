//! The public history (`REPLAY_PUBLIC`) gathered from the nodes' memory, for an engine that
//! cannot keep it (a NATS server without JetStream; Redis and JetStream keep it, see the
//! module docs of [`super`]). Each node keeps in memory what was published on it and what
//! it received on topics it follows (same id and time as the origin's); a join replaying
//! on a node asks every node for its history of the topic and merges the answers by id
//! with its own. A client that dropped from node A and replays on node B gets what it
//! missed while A lives, whether or not B followed the topic; with a database, the origin
//! also writes it to Postgres, so it survives nodes.

use ahash::{AHashMap, AHashSet};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use super::envelope::{
    header, put_str16, Body, Malformed, Reader, KIND_HISTORY_ANSWER, KIND_HISTORY_REQUEST, TAG_MAP, TAG_USER_BINARY,
    TAG_USER_JSON,
};
use crate::fanout::TopicKey;
use crate::publish::history::{Stored, StoredBody};

/// An answer larger than this keeps its newest messages only (NATS' default payload limit
/// is 1 MiB; a topic's memory history is at most that much payload).
const ANSWER_BYTES: usize = 900 * 1024;

/// Asks every node for `key`'s public history since `since_ms`.
pub fn encode_request(origin: u64, key: &TopicKey, request: u64, since_ms: i64) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(40 + key.topic.len());
    header(&mut out, KIND_HISTORY_REQUEST, origin, 0, key)?;
    out.put_u64_le(request);
    out.put_i64_le(since_ms);
    Some(out.freeze())
}

/// This node's answer: `entries` (oldest first), the oldest left out beyond
/// [`ANSWER_BYTES`].
pub fn encode_answer(origin: u64, key: &TopicKey, request: u64, entries: &[Stored]) -> Option<Bytes> {
    let mut budget = ANSWER_BYTES;
    let kept = entries
        .iter()
        .rev()
        .take_while(|m| match budget.checked_sub(size(m)) {
            Some(left) => {
                budget = left;
                true
            }
            None => false,
        })
        .count();
    let entries = &entries[entries.len() - kept..];
    let mut out = BytesMut::with_capacity(64 + key.topic.len() + (ANSWER_BYTES - budget));
    header(&mut out, KIND_HISTORY_ANSWER, origin, 0, key)?;
    out.put_u64_le(request);
    out.put_u32_le(u32::try_from(entries.len()).ok()?);
    for m in entries {
        out.put_i64_le(m.at_us);
        put_str16(&mut out, &m.id)?;
        match &m.body {
            StoredBody::Map(map) => {
                out.put_u8(TAG_MAP);
                put_bytes32(&mut out, map)?;
            }
            StoredBody::User { event, payload } => {
                let (tag, bytes) = match payload {
                    Ok(json) => (TAG_USER_JSON, json),
                    Err(binary) => (TAG_USER_BINARY, binary),
                };
                out.put_u8(tag);
                put_str16(&mut out, event)?;
                put_bytes32(&mut out, bytes)?;
            }
        }
    }
    Some(out.freeze())
}

fn size(m: &Stored) -> usize {
    let body = match &m.body {
        StoredBody::Map(b) => b.len(),
        StoredBody::User {
            event,
            payload: Ok(b) | Err(b),
        } => event.len() + b.len() + 2,
    };
    body + m.id.len() + 16
}

fn put_bytes32(out: &mut BytesMut, bytes: &[u8]) -> Option<()> {
    out.put_u32_le(u32::try_from(bytes.len()).ok()?);
    out.put_slice(bytes);
    Some(())
}

/// Reads a history answer's body (after the header).
pub(super) fn decode_answer(r: &mut Reader<'_>) -> Result<Body, Malformed> {
    let request = r.u64()?;
    let count = r.u32()? as usize;
    // Each entry takes at least 15 bytes: a count beyond what is left is a lie.
    let mut entries = Vec::with_capacity(count.min(r.remaining() / 15));
    for _ in 0..count {
        let at_us = r.u64()? as i64;
        let id = r.str16()?.into();
        let body = match r.u8()? {
            TAG_MAP => {
                let len = r.u32()? as usize;
                StoredBody::Map(r.take(len)?)
            }
            tag @ (TAG_USER_JSON | TAG_USER_BINARY) => {
                let event = r.str16()?.to_owned();
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                StoredBody::User {
                    event,
                    payload: if tag == TAG_USER_JSON { Ok(bytes) } else { Err(bytes) },
                }
            }
            _ => return Err(Malformed::Invalid("unknown stored message tag")),
        };
        entries.push(Stored { id, at_us, body });
    }
    Ok(Body::HistoryAnswer { request, entries })
}

/// Replaying joins of this node waiting for the other nodes' histories, by request.
#[derive(Default)]
pub struct Waits {
    by_request: AHashMap<u64, Wait>,
}

struct Wait {
    answered: AHashSet<u64>,
    entries: Vec<Stored>,
    count: watch::Sender<usize>,
}

impl Waits {
    /// Starts waiting for answers to `request`; the receiver counts the nodes that answered.
    pub fn start(&mut self, request: u64) -> watch::Receiver<usize> {
        let (count, counted) = watch::channel(0);
        self.by_request.insert(
            request,
            Wait {
                answered: AHashSet::new(),
                entries: Vec::new(),
                count,
            },
        );
        counted
    }

    /// `origin` answered `request` (once per node; an unknown request is ignored).
    pub fn answered(&mut self, request: u64, origin: u64, entries: Vec<Stored>) {
        if let Some(wait) = self.by_request.get_mut(&request) {
            if wait.answered.insert(origin) {
                wait.entries.extend(entries);
                wait.count.send_replace(wait.answered.len());
            }
        }
    }

    /// Stops waiting for `request`; what arrived.
    pub fn finish(&mut self, request: u64) -> Vec<Stored> {
        self.by_request.remove(&request).map(|w| w.entries).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::envelope::{decode, Envelope};

    fn stored(id: &str, at_us: i64, body: StoredBody) -> Stored {
        Stored {
            id: id.into(),
            at_us,
            body,
        }
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let key = TopicKey::new("realtime:room", false);
        let req = encode_request(9, &key, 77, 1_700_000_000_000).expect("encodes");
        assert_eq!(
            decode(&req),
            Ok(Envelope {
                origin: 9,
                key: key.clone(),
                body: Body::HistoryRequest {
                    request: 77,
                    since_ms: 1_700_000_000_000
                }
            })
        );
        let entries = vec![
            stored("a", 1, StoredBody::Map(Bytes::from_static(br#"{"event":"e"}"#))),
            stored(
                "b",
                2,
                StoredBody::User {
                    event: "ev".into(),
                    payload: Ok(Bytes::from_static(b"{\"n\":1}")),
                },
            ),
            stored(
                "c",
                3,
                StoredBody::User {
                    event: "bin".into(),
                    payload: Err(Bytes::from_static(&[0, 255, 7])),
                },
            ),
        ];
        let answer = encode_answer(9, &key, 77, &entries).expect("encodes");
        assert_eq!(
            decode(&answer),
            Ok(Envelope {
                origin: 9,
                key,
                body: Body::HistoryAnswer { request: 77, entries }
            })
        );
    }

    #[test]
    fn an_answer_over_the_budget_keeps_the_newest() {
        let key = TopicKey::new("realtime:big", false);
        let big = |id: &str, at| stored(id, at, StoredBody::Map(Bytes::from(vec![b' '; 400 * 1024])));
        let answer = encode_answer(1, &key, 5, &[big("old", 1), big("mid", 2), big("new", 3)]).expect("encodes");
        let Ok(Envelope {
            body: Body::HistoryAnswer { entries, .. },
            ..
        }) = decode(&answer)
        else {
            panic!("not an answer");
        };
        let ids: Vec<&str> = entries.iter().map(|m| &*m.id).collect();
        assert_eq!(ids, ["mid", "new"]);
    }

    #[test]
    fn a_truncated_answer_is_refused() {
        let key = TopicKey::new("realtime:t", false);
        let answer = encode_answer(
            1,
            &key,
            5,
            &[stored("a", 1, StoredBody::Map(Bytes::from_static(b"{}")))],
        )
        .expect("encodes");
        assert!(decode(&answer.slice(..answer.len() - 1)).is_err());
    }
}
