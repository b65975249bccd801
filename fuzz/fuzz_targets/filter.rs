//! The `postgres_changes` filter grammar (`parse_filters`) and binding parameters
//! (`Binding::parse`).
//!
//! Input: a UTF-8 filter string; if it is a JSON object, also the binding parameters.
//! Invariant: each parsed condition, written back in canonical form (value quoted, `in`
//! list in parentheses), parses to the same condition when its column and `in` list
//! contain nothing the splitter treats specially.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_protocol::filter::{parse_filters, Binding, Condition, Op};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_filter(text);
    if let Ok(params) = serde_json::from_str::<Map<String, Value>>(text) {
        match Binding::parse(&params) {
            Ok(b) => {
                let _ = b.inspect();
                if let Some(Value::String(f)) = params.get("filter") {
                    assert_eq!(Ok(b.filters), parse_filters(f));
                }
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
});

fn check_filter(text: &str) {
    let Ok(conditions) = parse_filters(text) else { return };
    assert!(conditions.len() <= text.matches(',').count() + 1);
    for c in &conditions {
        assert!(!c.column.contains('='), "column {:?} contains '='", c.column);
        if c.op == Op::In {
            assert!(c.value.starts_with('{') && c.value.ends_with('}'), "{c:?}");
        }
        let _ = c.to_string();
        if let Some(canonical) = canonical(c) {
            assert_eq!(
                parse_filters(&canonical).as_deref(),
                Ok(std::slice::from_ref(c)),
                "{text:?} → {canonical:?}"
            );
        }
    }
}

/// `column=[not.]op."value"` (or `in.(list)`), when that form is unambiguous.
fn canonical(c: &Condition) -> Option<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.trim() == s
            && !s.contains(['=', ',', '(', ')', '"', '\\'])
            // '.' right after "not" would read as a negation.
            && !s.starts_with("not.")
    };
    if !plain(&c.column) {
        return None;
    }
    let not = if c.negate { "not." } else { "" };
    let value = if c.op == Op::In {
        let inner = &c.value[1..c.value.len() - 1];
        if inner.contains(['(', ')', '"']) {
            return None;
        }
        format!("({inner})")
    } else {
        let mut quoted = String::from("\"");
        for ch in c.value.chars() {
            if ch == '"' || ch == '\\' {
                quoted.push('\\');
            }
            quoted.push(ch);
        }
        quoted.push('"');
        quoted
    };
    Some(format!("{}={not}{}.{value}", c.column, c.op.name()))
}
