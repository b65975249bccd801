//! The `persist` request of a client broadcast (store the message for replay on a private
//! channel): supabase-js writes it as the `persist` key of the binary push's metadata
//! (`{"persist":true}`, `{"persist":{"ttl":N}}`); a protocol-1.0.0 (or any text) push
//! carries it as a `persist` member of the broadcast map. Decoding only: what to do with
//! it is the server's business.

use serde_json::Value;

/// What a broadcast asked for under `persist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// `true` or `{}`: store with the server's default lifetime.
    Default,
    /// `{"ttl": N}`: store for N seconds (N ≥ 1).
    Ttl(u64),
    /// A `persist` value that is neither; the text says what is wrong.
    Invalid(&'static str),
}

/// Why a `persist` value is refused (client-visible).
pub const INVALID_PERSIST: &str = "persist must be true or {\"ttl\": <seconds>}";
/// Why a `ttl` is refused (client-visible).
pub const INVALID_TTL: &str = "persist ttl must be a positive integer number of seconds";

/// `persist` from a binary push's metadata (a JSON object's text, or empty). Metadata that
/// is not a JSON object carries no request.
pub fn from_metadata(metadata: &[u8]) -> Option<Persist> {
    if metadata.is_empty() {
        return None;
    }
    match serde_json::from_slice::<Value>(metadata) {
        Ok(Value::Object(m)) => m.get("persist").and_then(from_value),
        _ => None,
    }
}

/// `persist` from a text push's broadcast map. Only parsed when the text mentions
/// `"persist"`, so ordinary broadcasts pay one byte search.
pub fn from_map(map: &[u8]) -> Option<Persist> {
    if !contains(map, b"\"persist\"") {
        return None;
    }
    match serde_json::from_slice::<Value>(map) {
        Ok(Value::Object(m)) => m.get("persist").and_then(from_value),
        _ => None,
    }
}

/// `true` / `{}` / `{"ttl": N}` → a request; absent, `null` and `false` → none.
pub fn from_value(v: &Value) -> Option<Persist> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::Bool(true) => Some(Persist::Default),
        Value::Object(o) => Some(match o.get("ttl") {
            None | Some(Value::Null) => Persist::Default,
            Some(ttl) => match ttl.as_u64() {
                Some(n) if n >= 1 => Persist::Ttl(n),
                _ => Persist::Invalid(INVALID_TTL),
            },
        }),
        _ => Some(Persist::Invalid(INVALID_PERSIST)),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_as_supabase_js_writes_it() {
        assert_eq!(from_metadata(br#"{"persist":true}"#), Some(Persist::Default));
        assert_eq!(from_metadata(br#"{"persist":{"ttl":60}}"#), Some(Persist::Ttl(60)));
        // `{ttl: undefined}` is stringified without the key.
        assert_eq!(from_metadata(br#"{"persist":{}}"#), Some(Persist::Default));
        assert_eq!(from_metadata(br#"{"persist":false}"#), None);
        assert_eq!(from_metadata(b""), None);
        assert_eq!(from_metadata(b"not json"), None);
        assert_eq!(from_metadata(br#"{"other":1}"#), None);
    }

    #[test]
    fn bad_values_are_invalid_not_ignored() {
        for bad in [
            json!({"ttl": 0}),
            json!({"ttl": -5}),
            json!({"ttl": "60"}),
            json!({"ttl": 1.5}),
        ] {
            assert_eq!(from_value(&bad), Some(Persist::Invalid(INVALID_TTL)), "{bad}");
        }
        for bad in [json!("yes"), json!(1), json!([true])] {
            assert_eq!(from_value(&bad), Some(Persist::Invalid(INVALID_PERSIST)), "{bad}");
        }
    }

    #[test]
    fn text_map_member() {
        assert_eq!(
            from_map(br#"{"type":"broadcast","event":"e","payload":{},"persist":{"ttl":5}}"#),
            Some(Persist::Ttl(5))
        );
        assert_eq!(from_map(br#"{"type":"broadcast","event":"e","payload":{}}"#), None);
        // Only the top-level member counts.
        assert_eq!(from_map(br#"{"event":"e","payload":{"persist":true}}"#), None);
    }
}
