//! Presence as JSON: the `presence_diff` payload ([`Diff`]) and the grouping shared with
//! `presence_state`, written by hand so every meta's JSON is spliced, never re-serialized.

use std::fmt::Write as _;
use std::sync::Arc;

use super::Meta;

/// A change to broadcast to every subscriber of the topic as `presence_diff`.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "subscribers must see every presence diff"]
pub struct Diff {
    /// `(key, meta)` that appeared.
    pub joins: Vec<(String, Arc<Meta>)>,
    /// `(key, meta)` that went away; the meta is the one sent when it joined.
    pub leaves: Vec<(String, Arc<Meta>)>,
}

impl Diff {
    /// `{"joins":{KEY:{"metas":[META,...]}},"leaves":{...}}`. Both keys are always present
    /// (the Python client requires them); metas are grouped by key in diff order.
    pub fn to_json(&self) -> String {
        let size =
            |side: &[(String, Arc<Meta>)]| -> usize { side.iter().map(|(k, m)| k.len() + m.json.len() + 16).sum() };
        let mut out = String::with_capacity(24 + size(&self.joins) + size(&self.leaves));
        out.push_str("{\"joins\":");
        write_side(&mut out, &self.joins);
        out.push_str(",\"leaves\":");
        write_side(&mut out, &self.leaves);
        out.push('}');
        out
    }

    /// True when there is nothing to broadcast.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Appends a later diff, so that applying `self` once equals applying both in order.
    /// A meta that joined in `self` and leaves in `later` was never sent: it is dropped
    /// from both sides instead of being sent as a join and a leave.
    pub fn absorb(&mut self, later: Diff) {
        for (key, meta) in later.leaves {
            match self
                .joins
                .iter()
                .position(|(k, m)| *k == key && m.phx_ref == meta.phx_ref)
            {
                Some(i) => {
                    self.joins.remove(i);
                }
                None => self.leaves.push((key, meta)),
            }
        }
        self.joins.extend(later.joins);
    }
}

fn write_side(out: &mut String, side: &[(String, Arc<Meta>)]) {
    let mut items: Vec<(&str, &str)> = side.iter().map(|(k, m)| (k.as_str(), &*m.json)).collect();
    // A stable sort makes equal keys adjacent while keeping each key's metas in diff order.
    items.sort_by(|a, b| a.0.cmp(b.0));
    write_groups(out, items.into_iter());
}

/// Writes `{KEY:{"metas":[META,...]},...}` from `(key, meta json)` pairs whose equal keys are
/// adjacent.
pub(super) fn write_groups<'a>(out: &mut String, items: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    let mut current: Option<&str> = None;
    for (key, json) in items {
        if current == Some(key) {
            out.push(',');
        } else {
            if current.is_some() {
                out.push_str("]},");
            }
            push_json_string(out, key);
            out.push_str(":{\"metas\":[");
            current = Some(key);
        }
        out.push_str(json);
    }
    if current.is_some() {
        out.push_str("]}");
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal, escaped like serde_json does. Written by hand because
/// it cannot fail and needs no temporary buffer.
pub(super) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    // Most keys need no escaping: copy them whole.
    if !s.chars().any(|c| c == '"' || c == '\\' || c < ' ') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Writing into a String cannot fail.
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
