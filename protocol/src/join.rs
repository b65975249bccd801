//! The `phx_join` payload: `{"config": {...}, "access_token": "..."}` with Supabase's
//! defaults and its leniency (protocol.md §4.1): unknown keys are ignored, booleans may be
//! strings, a malformed part falls back to its default instead of failing the join.

use serde_json::{Map, Value};

/// A parsed join request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinRequest {
    /// The channel config.
    pub config: JoinConfig,
    /// `access_token` (or the legacy `user_token`) if it is a string.
    pub access_token: Option<String>,
}

/// `config` of a join, with defaults applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinConfig {
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub broadcast_self: bool,
    /// `broadcast.ack`: reply `ok` to each broadcast push.
    pub broadcast_ack: bool,
    /// `broadcast.replay`, raw (used by private-channel replay).
    pub replay: Option<Value>,
    /// `presence.enabled`.
    pub presence_enabled: bool,
    /// `presence.key` as a string; `None` when missing or empty (the server then makes one).
    pub presence_key: Option<String>,
    /// `private`.
    pub private: bool,
    /// `postgres_changes` bindings exactly as sent (null entries dropped).
    pub postgres_changes: Vec<Map<String, Value>>,
    /// `postgres_changes_options.wait`: reply to the join only once the bindings are
    /// live, within this many milliseconds (`timeout`, default
    /// [`DEFAULT_POSTGRES_CHANGES_WAIT_MS`], at most [`MAX_POSTGRES_CHANGES_WAIT_MS`]).
    /// `None` without `wait`.
    pub postgres_changes_wait_ms: Option<u64>,
    /// `broadcast.replication_ready`: push a `system` message once the Broadcast from
    /// Database stream is running.
    pub replication_ready: bool,
}

/// The wait when `postgres_changes_options.timeout` is not given (supabase-js' default).
pub const DEFAULT_POSTGRES_CHANGES_WAIT_MS: u64 = 15_000;
/// The longest wait a client may ask for.
pub const MAX_POSTGRES_CHANGES_WAIT_MS: u64 = 60_000;

impl JoinRequest {
    /// Parses a join payload. Never fails: what does not parse takes its default, as the
    /// Supabase server does (it logs `InvalidJoinPayload` and goes on).
    pub fn parse(payload: &[u8]) -> JoinRequest {
        let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(payload) else {
            return JoinRequest::default();
        };
        let access_token = match root.remove("access_token") {
            Some(Value::String(t)) => Some(t),
            _ => match root.remove("user_token") {
                Some(Value::String(t)) => Some(t),
                _ => None,
            },
        };
        let config = match root.remove("config") {
            Some(Value::Object(config)) => JoinConfig::from_map(config),
            _ => JoinConfig::default(),
        };
        JoinRequest { config, access_token }
    }
}

impl JoinConfig {
    fn from_map(mut config: Map<String, Value>) -> JoinConfig {
        let broadcast = object(config.remove("broadcast"));
        let presence = object(config.remove("presence"));
        let postgres_changes = match config.remove("postgres_changes") {
            Some(Value::Array(list)) => list
                .into_iter()
                .filter_map(|b| match b {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let pg_options = object(config.remove("postgres_changes_options"));
        let postgres_changes_wait_ms = flag(pg_options.get("wait")).then(|| {
            pg_options
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_POSTGRES_CHANGES_WAIT_MS)
                .min(MAX_POSTGRES_CHANGES_WAIT_MS)
        });
        JoinConfig {
            broadcast_self: flag(broadcast.get("self")),
            broadcast_ack: flag(broadcast.get("ack")),
            replay: broadcast.get("replay").filter(|v| !v.is_null()).cloned(),
            presence_enabled: flag(presence.get("enabled")),
            presence_key: presence.get("key").and_then(key_string),
            private: flag(config.get("private")),
            postgres_changes,
            postgres_changes_wait_ms,
            replication_ready: flag(broadcast.get("replication_ready")),
        }
    }
}

fn object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Supabase's flexible boolean: `true`/`false` or the strings `"true"`/`"false"` in any case.
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The presence key may be any JSON value; the wire uses its string form.
fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The integer id a binding gets in the join reply and in every `postgres_changes` frame:
/// a stable hash of the binding as sent (keys sorted), in 0..2^31 so it is a safe JSON
/// integer for both clients. Equal bindings get equal ids on every node and restart.
pub fn binding_id(binding: &Map<String, Value>) -> u32 {
    let mut h = Fnv1a::new();
    hash_value(&mut h, &Value::Object(binding.clone()));
    let v = h.finish();
    ((v ^ (v >> 32)) as u32) & 0x7fff_ffff
}

/// The join reply response: `{"postgres_changes":[<binding + "id">...]}`.
pub fn join_reply_response(bindings: &[Map<String, Value>]) -> String {
    let list: Vec<Value> = bindings
        .iter()
        .map(|b| {
            let mut echoed = b.clone();
            echoed.insert("id".into(), Value::from(binding_id(b)));
            Value::Object(echoed)
        })
        .collect();
    let mut response = Map::new();
    response.insert("postgres_changes".into(), Value::Array(list));
    Value::Object(response).to_string()
}

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hashes a value canonically (object keys sorted) so map ordering never changes an id.
fn hash_value(h: &mut Fnv1a, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.write(b"{");
            for k in keys {
                h.write(k.as_bytes());
                h.write(b":");
                if let Some(v) = m.get(k) {
                    hash_value(h, v);
                }
                h.write(b",");
            }
            h.write(b"}");
        }
        Value::Array(a) => {
            h.write(b"[");
            for v in a {
                hash_value(h, v);
                h.write(b",");
            }
            h.write(b"]");
        }
        other => h.write(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_join_from_recording() {
        // recorded/realtime-js-2.119.0-vsn2.frames.jsonl
        let p = br#"{"config":{"broadcast":{"self":true,"ack":true},"presence":{"key":"user-1","enabled":true},"postgres_changes":[{"event":"*","schema":"public","table":"todos","filter":"id=eq.46"}],"private":false},"access_token":"USER-JWT-1"}"#;
        let j = JoinRequest::parse(p);
        assert!(j.config.broadcast_self && j.config.broadcast_ack && j.config.presence_enabled && !j.config.private);
        assert_eq!(j.config.presence_key.as_deref(), Some("user-1"));
        assert_eq!(j.access_token.as_deref(), Some("USER-JWT-1"));
        assert_eq!(j.config.postgres_changes.len(), 1);
    }

    #[test]
    fn docs_v1_join_without_token_or_key() {
        // samples/docs-v1-client-phx_join.txt payload
        let j = JoinRequest::parse(
            br#"{"config":{"broadcast":{"ack":false,"self":false},"presence":{"enabled":false},"private":false}}"#,
        );
        assert_eq!(j, JoinRequest::default());
    }

    #[test]
    fn lenient_values() {
        let j = JoinRequest::parse(br#"{"config":{"broadcast":{"self":"TRUE","ack":1},"presence":{"key":42},"private":"true","postgres_changes":[null,{"event":"INSERT","schema":"public"}]},"user_token":"legacy"}"#);
        assert!(j.config.broadcast_self && !j.config.broadcast_ack && j.config.private);
        assert_eq!(j.config.presence_key.as_deref(), Some("42"));
        assert_eq!(j.config.postgres_changes.len(), 1);
        assert_eq!(j.access_token.as_deref(), Some("legacy"));
        assert_eq!(JoinRequest::parse(b"garbage"), JoinRequest::default());
        assert_eq!(JoinRequest::parse(br#"{"config":[]}"#), JoinRequest::default());
        assert_eq!(
            JoinRequest::parse(br#"{"config":{"presence":{"key":""}}}"#)
                .config
                .presence_key,
            None
        );
    }

    #[test]
    fn wait_and_replication_ready_options() {
        let j = JoinRequest::parse(
            br#"{"config":{"broadcast":{"replication_ready":true},"postgres_changes_options":{"wait":true}}}"#,
        );
        assert!(j.config.replication_ready);
        assert_eq!(
            j.config.postgres_changes_wait_ms,
            Some(DEFAULT_POSTGRES_CHANGES_WAIT_MS)
        );
        let j = JoinRequest::parse(br#"{"config":{"postgres_changes_options":{"wait":"true","timeout":2500}}}"#);
        assert_eq!(j.config.postgres_changes_wait_ms, Some(2500));
        let j = JoinRequest::parse(br#"{"config":{"postgres_changes_options":{"wait":true,"timeout":9999999}}}"#);
        assert_eq!(j.config.postgres_changes_wait_ms, Some(MAX_POSTGRES_CHANGES_WAIT_MS));
        let j = JoinRequest::parse(br#"{"config":{"postgres_changes_options":{"wait":false,"timeout":100}}}"#);
        assert_eq!(j.config.postgres_changes_wait_ms, None);
        assert!(!j.config.replication_ready);
    }

    #[test]
    fn reply_echoes_bindings_with_stable_integer_ids() {
        let j = JoinRequest::parse(br#"{"config":{"postgres_changes":[{"event":"*","schema":"public","table":"todos","filter":"id=eq.46","select":["id"]},{"event":"INSERT","schema":"public"}]}}"#);
        let reply: Value = serde_json::from_str(&join_reply_response(&j.config.postgres_changes)).unwrap();
        let list = reply["postgres_changes"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["filter"], "id=eq.46");
        assert_eq!(list[0]["select"], serde_json::json!(["id"]));
        assert!(list[0]["id"].is_u64() && list[1]["id"].is_u64());
        assert_ne!(list[0]["id"], list[1]["id"]);
        // Key order does not change the id.
        let a: Map<String, Value> = serde_json::from_str(r#"{"event":"INSERT","schema":"public"}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"schema":"public","event":"INSERT"}"#).unwrap();
        assert_eq!(binding_id(&a), binding_id(&b));
        assert!(binding_id(&a) < (1 << 31));
    }

    #[test]
    fn numbers_in_bindings_are_echoed_exactly() {
        // Found by fuzz/join: serde_json's default float parser read 7.333333334334373e38
        // one ulp low, so the reply echoed 7.333333334334372e38, not what the client sent
        // (Supabase echoes the exact value). The workspace enables `float_roundtrip`.
        let j = JoinRequest::parse(
            br#"{"config":{"postgres_changes":[{"schema":"public","selfid":7.333333334334373e38,"x":733333333433437333333333333337333332337.3}]}}"#,
        );
        let reply = join_reply_response(&j.config.postgres_changes);
        assert!(reply.contains(r#""selfid":7.333333334334373e+38"#), "{reply}");
        assert!(reply.contains(r#""x":7.333333334334373e+38"#), "{reply}");
        let again: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(
            again["postgres_changes"][0]["selfid"],
            j.config.postgres_changes[0]["selfid"]
        );
    }

    #[test]
    fn empty_bindings_reply() {
        // samples/join-reply-no-postgres.txt
        assert_eq!(join_reply_response(&[]), r#"{"postgres_changes":[]}"#);
    }
}
