//! Replay of stored broadcasts at join (private channels, protocol.md §6.3): the newest
//! `limit` (at most 25) messages of the topic since `since`, delivered oldest first after
//! the join reply with `meta {"id", "replayed": true}`; their live copies are then not
//! delivered to the channel again. With `REPLAY_PUBLIC` public channels replay too, from
//! [`crate::publish::history`] and the public rows of `realtime.messages`.

use realtime_protocol::broadcast::{json_map, map_with_meta, user_broadcast_frame};
use realtime_protocol::{encode, Encoding, Vsn, WireFrame};
use serde_json::Value;
use std::sync::Arc;
use tracing::debug;

use crate::postgres_changes::pool::Pool;
pub use crate::publish::history::{Stored, StoredBody, RING};

/// Most messages one replay returns (Supabase's cap and default).
pub const MAX_REPLAY: i64 = RING as i64;

/// `{since, limit}` from the join config; `None` when they are not valid integers.
pub fn params(replay: &Value) -> Option<(i64, i64)> {
    let since = replay.get("since").and_then(Value::as_i64)?;
    let limit = match replay.get("limit") {
        None | Some(Value::Null) => MAX_REPLAY,
        Some(v) => v.as_i64()?,
    };
    Some((since, limit.clamp(1, MAX_REPLAY)))
}

/// Reads the newest `limit` messages of `realtime.messages` for `topic` (without
/// `realtime:`) since `since_ms` with the given privacy, oldest first, leaving out
/// persisted broadcasts past their `ttl`. Rows of one transaction share `inserted_at`;
/// among them the physical order (`ctid`) is the insertion order, so a replay keeps the
/// order they were sent in.
pub async fn load(
    pool: &Pool,
    topic: &str,
    private: bool,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<Stored>, tokio_postgres::Error> {
    let conn = pool.checkout().await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&topic, &(since_ms as f64), &limit, &private];
    let rows = match conn.query(&select(UNEXPIRED), &params).await {
        // A schema managed by hand without migration 5 has no expiry: nothing expires.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => {
            debug!(error = %e, "realtime.messages has no rs_expires_at: replaying without expiry");
            conn.query(&select(""), &params).await?
        }
        other => other?,
    };
    let mut out: Vec<Stored> = rows
        .iter()
        .map(|r| Stored {
            id: Arc::from(r.get::<_, String>(0)),
            at_us: r.get(1),
            body: StoredBody::user(r.get(2), r.get(3), r.get(4)),
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// Leaves out persisted broadcasts whose `ttl` has passed (migration 5).
const UNEXPIRED: &str = "and (rs_expires_at is null or rs_expires_at > timezone('utc', now()))";

fn select(expiry: &str) -> String {
    format!(
        "select id::text, (extract(epoch from inserted_at) * 1000000)::int8, coalesce(event, ''), \
                payload::text, binary_payload from realtime.messages \
         where topic = $1 and private = $4 and extension = 'broadcast' {expiry} \
           and inserted_at >= to_timestamp($2::float8 / 1000) at time zone 'utc' \
           and inserted_at < timezone('utc', now()) + interval '1 minute' \
         order by inserted_at desc, ctid desc limit $3"
    )
}

/// The newest `limit` of several sources' messages, each id once, oldest first.
pub fn merge(sources: impl IntoIterator<Item = Vec<Stored>>, limit: i64) -> Vec<Stored> {
    let mut all: Vec<Stored> = sources.into_iter().flatten().collect();
    // Stable: rows stored in one transaction share a timestamp and keep their order.
    all.sort_by_key(|m| m.at_us);
    let mut seen = ahash::AHashSet::new();
    all.retain(|m| seen.insert(m.id.clone()));
    let keep = usize::try_from(limit).unwrap_or(0);
    all.split_off(all.len().saturating_sub(keep))
}

/// The frame of one replayed message for a socket of version `vsn` (none for a binary
/// message on V1). JSON messages are channel pushes carrying the join_ref.
pub fn frame(m: &Stored, vsn: Vsn, join_ref: Option<&str>, topic: &str) -> Option<WireFrame> {
    let meta = serde_json::json!({"id": &*m.id, "replayed": true}).to_string();
    match &m.body {
        StoredBody::User {
            event,
            payload: Ok(json),
        } => {
            let map = json_map(event, Some(meta.as_bytes()), json);
            Some(encode::push(vsn, join_ref, topic, "broadcast", &map))
        }
        StoredBody::User {
            event,
            payload: Err(bytes),
        } if vsn == Vsn::V2 => user_broadcast_frame(topic, event, meta.as_bytes(), Encoding::Binary, bytes),
        StoredBody::User { .. } => None,
        StoredBody::Map(map) => {
            let map = map_with_meta(map, meta.as_bytes())?;
            Some(encode::push(vsn, join_ref, topic, "broadcast", &map))
        }
    }
}

/// Ids of the replayed messages.
pub fn ids(messages: &[Stored]) -> ahash::AHashSet<String> {
    messages.iter().map(|m| m.id.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn params_like_supabase() {
        assert_eq!(
            params(&json!({"since": 1763407103911i64, "limit": 10})),
            Some((1763407103911, 10))
        );
        assert_eq!(params(&json!({"since": 0})), Some((0, 25)));
        assert_eq!(params(&json!({"since": 0, "limit": 100})), Some((0, 25)));
        assert_eq!(params(&json!({"since": 0, "limit": 0})), Some((0, 1)));
        assert_eq!(params(&json!({"limit": 2})), None);
        assert_eq!(params(&json!({"since": "0"})), None);
        assert_eq!(params(&json!({"since": 0, "limit": 1.5})), None);
    }

    #[test]
    fn replayed_json_is_a_channel_push() {
        // samples/replay-broadcast-json.txt
        let m = Stored {
            id: "00000000-0000-0000-0000-000000000001".into(),
            at_us: 0,
            body: StoredBody::User {
                event: "first".into(),
                payload: Ok(Bytes::from_static(br#"{"value":"first"}"#)),
            },
        };
        let f = frame(&m, Vsn::V2, Some("1"), "realtime:test").unwrap();
        let v: Value = serde_json::from_slice(f.bytes()).unwrap();
        assert_eq!(
            v,
            json!(["1", null, "realtime:test", "broadcast", {"event": "first", "meta": {"id": "00000000-0000-0000-0000-000000000001", "replayed": true}, "payload": {"value": "first"}, "type": "broadcast"}])
        );
        let bin = Stored {
            id: "x".into(),
            at_us: 0,
            body: StoredBody::User {
                event: "b".into(),
                payload: Err(Bytes::from_static(&[1, 2])),
            },
        };
        assert!(frame(&bin, Vsn::V1, Some("1"), "realtime:test").is_none());
        assert!(matches!(
            frame(&bin, Vsn::V2, Some("1"), "realtime:test"),
            Some(WireFrame::Binary(_))
        ));
    }

    #[test]
    fn replayed_map_gets_its_meta() {
        let m = Stored {
            id: "i".into(),
            at_us: 0,
            body: StoredBody::Map(Bytes::from_static(br#"{"type":"broadcast","event":"e","payload":{}}"#)),
        };
        let f = frame(&m, Vsn::V1, Some("1"), "realtime:t").unwrap();
        let v: Value = serde_json::from_slice(f.bytes()).unwrap();
        assert_eq!(
            v["payload"],
            json!({"type": "broadcast", "event": "e", "payload": {}, "meta": {"id": "i", "replayed": true}})
        );
    }

    #[test]
    fn merge_keeps_the_newest_each_once_oldest_first() {
        let m = |id: &str, at| Stored {
            id: id.into(),
            at_us: at,
            body: StoredBody::Map(Bytes::from_static(b"{}")),
        };
        let merged = merge(
            vec![vec![m("a", 1), m("c", 3), m("d", 4)], vec![m("c", 3), m("b", 2)]],
            3,
        );
        let ids: Vec<&str> = merged.iter().map(|m| &*m.id).collect();
        assert_eq!(ids, ["b", "c", "d"]);
    }
}
