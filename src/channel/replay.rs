//! Replay of stored broadcasts at join (private channels, protocol.md §6.3): the newest
//! `limit` (at most 25) messages of the topic since `since`, delivered oldest first after
//! the join reply with `meta {"id", "replayed": true}`; their live copies are then not
//! delivered to the channel again.

use bytes::Bytes;
use realtime_protocol::broadcast::{json_map, user_broadcast_frame};
use realtime_protocol::{encode, Encoding, Vsn, WireFrame};
use serde_json::Value;

use crate::postgres_changes::pool::Pool;

/// Most messages one replay returns (Supabase's cap and default).
pub const MAX_REPLAY: i64 = 25;

/// `{since, limit}` from the join config; `None` when they are not valid integers.
pub fn params(replay: &Value) -> Option<(i64, i64)> {
    let since = replay.get("since").and_then(Value::as_i64)?;
    let limit = match replay.get("limit") {
        None | Some(Value::Null) => MAX_REPLAY,
        Some(v) => v.as_i64()?,
    };
    Some((since, limit.clamp(1, MAX_REPLAY)))
}

/// A stored message.
pub struct Stored {
    id: String,
    event: String,
    /// JSON payload text, or the binary payload.
    body: Result<String, Vec<u8>>,
}

/// Reads the messages to replay, oldest first.
pub async fn load(pool: &Pool, topic: &str, since_ms: i64, limit: i64) -> Result<Vec<Stored>, tokio_postgres::Error> {
    let conn = pool.checkout().await?;
    let rows = conn
        .query(
            "select id::text, coalesce(event, ''), payload::text, binary_payload from realtime.messages \
             where topic = $1 and private and extension = 'broadcast' \
               and inserted_at >= to_timestamp($2::float8 / 1000) at time zone 'utc' \
               and inserted_at < timezone('utc', now()) + interval '1 minute' \
             order by inserted_at desc limit $3",
            &[&topic, &(since_ms as f64), &limit],
        )
        .await?;
    let mut out: Vec<Stored> = rows
        .iter()
        .map(|r| Stored {
            id: r.get(0),
            event: r.get(1),
            body: match r.get::<_, Option<String>>(2) {
                Some(json) => Ok(json),
                None => Err(r.get::<_, Option<Vec<u8>>>(3).unwrap_or_default()),
            },
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// The frame of one replayed message for a socket of version `vsn` (none for a binary
/// message on V1). JSON messages are channel pushes carrying the join_ref.
pub fn frame(m: &Stored, vsn: Vsn, join_ref: Option<&str>, topic: &str) -> Option<WireFrame> {
    let meta = serde_json::json!({"id": m.id, "replayed": true}).to_string();
    match &m.body {
        Ok(json) => {
            let map = json_map(&m.event, Some(meta.as_bytes()), json.as_bytes());
            Some(encode::push(vsn, join_ref, topic, "broadcast", &map))
        }
        Err(bytes) if vsn == Vsn::V2 => user_broadcast_frame(
            topic,
            &m.event,
            meta.as_bytes(),
            Encoding::Binary,
            &Bytes::copy_from_slice(bytes),
        ),
        Err(_) => None,
    }
}

/// Ids of the replayed messages.
pub fn ids(messages: &[Stored]) -> ahash::AHashSet<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
            event: "first".into(),
            body: Ok(r#"{"value":"first"}"#.into()),
        };
        let f = frame(&m, Vsn::V2, Some("1"), "realtime:test").unwrap();
        let v: Value = serde_json::from_slice(f.bytes()).unwrap();
        assert_eq!(
            v,
            json!(["1", null, "realtime:test", "broadcast", {"event": "first", "meta": {"id": "00000000-0000-0000-0000-000000000001", "replayed": true}, "payload": {"value": "first"}, "type": "broadcast"}])
        );
        let bin = Stored {
            id: "x".into(),
            event: "b".into(),
            body: Err(vec![1, 2]),
        };
        assert!(frame(&bin, Vsn::V1, Some("1"), "realtime:test").is_none());
        assert!(matches!(
            frame(&bin, Vsn::V2, Some("1"), "realtime:test"),
            Some(WireFrame::Binary(_))
        ));
    }
}
