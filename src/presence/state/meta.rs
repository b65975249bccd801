//! One presence meta as it goes on the wire, serialized once.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Keys the server sets in a meta; the client's own copies are dropped so `json` never holds
/// the same key twice and a client cannot forge refs.
const SERVER_KEYS: [&str; 2] = ["phx_ref", "phx_ref_prev"];

/// One presence meta as it goes on the wire: the payload map + `phx_ref` (+ `phx_ref_prev`).
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// Unique ref of this meta; a leave repeats it.
    pub phx_ref: String,
    /// The ref this meta replaced, when it came from an update.
    pub phx_ref_prev: Option<String>,
    /// The client's track payload without `phx_ref`/`phx_ref_prev`.
    pub payload: Map<String, Value>,
    /// The whole meta as a JSON object, serialized once here so every `presence_state` and
    /// `presence_diff` splices it instead of re-serializing the payload.
    pub json: Arc<str>,
}

impl Meta {
    /// Builds a meta; `payload`'s own `phx_ref`/`phx_ref_prev` keys are dropped (ours win).
    pub fn new(phx_ref: String, phx_ref_prev: Option<String>, mut payload: Map<String, Value>) -> Meta {
        strip_server_keys(&mut payload);
        Self::build(phx_ref, phx_ref_prev, payload)
    }

    /// Parses a meta back from its `json` (for replication transports): `None` unless it is an
    /// object with a string `phx_ref`.
    pub fn from_json(json: &str) -> Option<Meta> {
        let Ok(Value::Object(mut payload)) = serde_json::from_str(json) else {
            return None;
        };
        let Some(Value::String(phx_ref)) = payload.remove("phx_ref") else {
            return None;
        };
        let phx_ref_prev = match payload.remove("phx_ref_prev") {
            Some(Value::String(prev)) => Some(prev),
            _ => None,
        };
        Some(Self::build(phx_ref, phx_ref_prev, payload))
    }

    /// `payload` must already be stripped of server keys.
    pub(super) fn build(phx_ref: String, phx_ref_prev: Option<String>, payload: Map<String, Value>) -> Meta {
        let mut obj = Map::new();
        obj.insert("phx_ref".to_owned(), Value::String(phx_ref.clone()));
        if let Some(prev) = &phx_ref_prev {
            obj.insert("phx_ref_prev".to_owned(), Value::String(prev.clone()));
        }
        obj.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Display of a Value writes into a String, which cannot fail.
        let json = Value::Object(obj).to_string().into();
        Meta {
            phx_ref,
            phx_ref_prev,
            payload,
            json,
        }
    }
}

pub(super) fn strip_server_keys(payload: &mut Map<String, Value>) {
    for key in SERVER_KEYS {
        payload.remove(key);
    }
}
