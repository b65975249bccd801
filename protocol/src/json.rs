//! Small helpers for splicing pre-encoded JSON into frames.

/// Appends `s` as a JSON string literal (quoted and escaped).
pub(crate) fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail; serde_json only errors on I/O or non-string keys.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends an optional string as a JSON string or `null`.
pub(crate) fn push_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut buf = Vec::with_capacity(s.len() + 2);
    push_str(&mut buf, s);
    // serde_json only writes valid UTF-8.
    String::from_utf8(buf).unwrap_or_default()
}
