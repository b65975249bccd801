//! An inserted `realtime.messages` row → what to fan out. Columns are found by name, so the
//! table may have more columns, or the same ones in another order (e.g. a schema made by
//! Supabase's migrations).

use bytes::Bytes;
use realtime_protocol::broadcast::Encoding;
use realtime_protocol::BroadcastMessage;
use realtime_wal::change::{Cell, Relation, TupleData};

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMessage {
    /// The topic without `realtime:`, as stored.
    pub topic: String,
    /// Deliver to the private topic (the default when the column is NULL).
    pub private: bool,
    /// The row id (also in the metadata).
    pub id: String,
    /// The broadcast, with metadata `{"id": …}`.
    pub message: BroadcastMessage,
}

/// Why a row is not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a broadcast to stream (e.g. `extension = 'presence'`, or a persisted client
    /// broadcast, which its server delivers live itself): nothing to deliver, not an error.
    NotBroadcast,
    /// The row cannot be delivered; the text says why.
    Invalid(String),
}

/// Decodes an inserted row of `relation` (which must be `realtime.messages`).
pub fn decode(relation: &Relation, row: &TupleData) -> Result<DbMessage, Skip> {
    let text = |name: &str| -> Result<Option<&str>, Skip> {
        let Some(i) = relation.columns.iter().position(|c| c.name == name) else {
            return Ok(None);
        };
        match row.0.get(i) {
            Some(Cell::Text(b)) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| Skip::Invalid(format!("column {name} is not UTF-8"))),
            Some(Cell::Null) | None => Ok(None),
            // Inserts carry every value in full, and the stream asks for text values.
            Some(Cell::Unchanged | Cell::Binary(_)) => Err(Skip::Invalid(format!("column {name} has no text value"))),
        }
    };
    if text("extension")? != Some("broadcast") || text("rs_delivered_live")? == Some("t") {
        return Err(Skip::NotBroadcast);
    }
    let topic = text("topic")?.ok_or_else(|| Skip::Invalid("topic is NULL".into()))?;
    let id = text("id")?.ok_or_else(|| Skip::Invalid("id is NULL".into()))?;
    let event = text("event")?.unwrap_or_default();
    // The column defaults to true; an explicit NULL errs on the private side.
    let private = text("private")? != Some("f");
    let (encoding, body) = match (text("binary_payload")?, text("payload")?) {
        (Some(hex), _) => (
            Encoding::Binary,
            Bytes::from(bytea_from_hex(hex).ok_or_else(|| Skip::Invalid("binary_payload is not hex bytea".into()))?),
        ),
        // jsonb's text output is JSON.
        (None, Some(json)) => (Encoding::Json, Bytes::copy_from_slice(json.as_bytes())),
        (None, None) => return Err(Skip::Invalid("payload and binary_payload are both NULL".into())),
    };
    let metadata = serde_json::json!({ "id": id }).to_string();
    Ok(DbMessage {
        topic: topic.to_owned(),
        private,
        id: id.to_owned(),
        message: BroadcastMessage::User {
            event: event.to_owned(),
            metadata: Some(Bytes::from(metadata)),
            encoding,
            body,
        },
    })
}

/// bytea's hex output (`\x0102ff`; the replication session sets `bytea_output=hex`) → bytes.
pub fn bytea_from_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use realtime_protocol::Vsn;
    use realtime_wal::pgoutput::{Column, ReplicaIdentity};

    use super::*;

    const ID: &str = "0d7a6c1e-4a57-4c39-9c2a-8f2b3b6a1d11";

    fn relation(cols: &[&str]) -> Relation {
        Relation {
            id: 1,
            namespace: "realtime".into(),
            name: "messages".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|c| Column {
                    flags_key: *c == "id",
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn row(cells: &[Option<&str>]) -> TupleData {
        TupleData(
            cells
                .iter()
                .map(|c| match c {
                    Some(v) => Cell::Text(Bytes::copy_from_slice(v.as_bytes())),
                    None => Cell::Null,
                })
                .collect(),
        )
    }

    const COLS: &[&str] = &[
        "topic",
        "extension",
        "payload",
        "event",
        "private",
        "updated_at",
        "inserted_at",
        "id",
        "binary_payload",
    ];

    #[test]
    fn json_row_becomes_a_user_broadcast_with_id_metadata() {
        let r = row(&[
            Some("room"),
            Some("broadcast"),
            Some(r#"{"v": 1, "id": "x"}"#),
            Some("ev"),
            Some("f"),
            Some("2025-01-01 00:00:00"),
            Some("2025-01-01 00:00:00"),
            Some(ID),
            None,
        ]);
        let m = decode(&relation(COLS), &r).unwrap();
        assert_eq!((m.topic.as_str(), m.private, m.id.as_str()), ("room", false, ID));
        let v1 = m.message.encode(Vsn::V1, "realtime:room").unwrap();
        let got: serde_json::Value = serde_json::from_slice(v1.bytes()).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"event": "broadcast", "ref": null, "topic": "realtime:room",
                "payload": {"event": "ev", "meta": {"id": ID}, "payload": {"v": 1, "id": "x"}, "type": "broadcast"}})
        );
    }

    #[test]
    fn binary_row_other_column_order_and_null_private() {
        let cols = [
            "id",
            "binary_payload",
            "payload",
            "topic",
            "event",
            "extension",
            "private",
        ];
        let r = row(&[
            Some(ID),
            Some("\\x0102fF"),
            None,
            Some("t"),
            Some("e"),
            Some("broadcast"),
            None,
        ]);
        let m = decode(&relation(&cols), &r).unwrap();
        assert!(m.private);
        let BroadcastMessage::User {
            encoding,
            body,
            metadata,
            ..
        } = &m.message
        else {
            panic!("not a user broadcast")
        };
        assert_eq!(*encoding, Encoding::Binary);
        assert_eq!(body.as_ref(), &[1, 2, 255]);
        assert_eq!(metadata.as_deref(), Some(format!(r#"{{"id":"{ID}"}}"#).as_bytes()));
        assert!(m.message.encode(Vsn::V1, "realtime:t").is_none());
    }

    #[test]
    fn skips() {
        let rel = relation(COLS);
        let presence = row(&[
            Some("room"),
            Some("presence"),
            Some("{}"),
            None,
            None,
            None,
            None,
            Some(ID),
            None,
        ]);
        assert_eq!(decode(&rel, &presence), Err(Skip::NotBroadcast));
        // A persisted client broadcast: its server delivered it live already.
        let mut cols = COLS.to_vec();
        cols.push("rs_delivered_live");
        let persisted = |flag| {
            row(&[
                Some("room"),
                Some("broadcast"),
                Some("{}"),
                Some("e"),
                Some("t"),
                None,
                None,
                Some(ID),
                None,
                Some(flag),
            ])
        };
        assert_eq!(decode(&relation(&cols), &persisted("t")), Err(Skip::NotBroadcast));
        assert!(decode(&relation(&cols), &persisted("f")).is_ok());
        let empty = row(&[
            Some("room"),
            Some("broadcast"),
            None,
            None,
            None,
            None,
            None,
            Some(ID),
            None,
        ]);
        assert!(matches!(decode(&rel, &empty), Err(Skip::Invalid(_))));
        let bad_hex = row(&[
            Some("room"),
            Some("broadcast"),
            None,
            None,
            None,
            None,
            None,
            Some(ID),
            Some("\\x0"),
        ]);
        assert!(matches!(decode(&rel, &bad_hex), Err(Skip::Invalid(_))));
        let short = TupleData(vec![Cell::Text(Bytes::from_static(b"room"))]);
        assert!(matches!(decode(&rel, &short), Err(Skip::NotBroadcast)));
        let unchanged = TupleData(vec![Cell::Unchanged; COLS.len()]);
        assert!(matches!(decode(&rel, &unchanged), Err(Skip::Invalid(_))));
    }

    #[test]
    fn hex() {
        assert_eq!(bytea_from_hex("\\x"), Some(vec![]));
        assert_eq!(bytea_from_hex("\\xdeadBEEF"), Some(vec![0xde, 0xad, 0xbe, 0xef]));
        for bad in ["deadbeef", "\\xzz", "\\x123", "\\\\x00"] {
            assert_eq!(bytea_from_hex(bad), None, "{bad}");
        }
    }
}
