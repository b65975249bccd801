//! Fuzzes the pgoutput decoder, the assembler and the value conversion.
//!
//! Run from `wal/` (the toolchain is stable; `RUSTC_BOOTSTRAP=1` lets cargo-fuzz pass its
//! nightly-only sanitizer flags):
//!
//! ```sh
//! cargo install cargo-fuzz   # once
//! RUSTC_BOOTSTRAP=1 cargo fuzz run pgoutput -- -max_total_time=60
//! ```
//!
//! The input is read twice:
//! 1. as one pgoutput message: `decode` must return `Ok` or `Err`, never panic, and whatever
//!    it accepts must survive `encode` → `decode` unchanged;
//! 2. as a stream of messages, each prefixed by a big-endian u16 length, pushed through an
//!    `Assembler`; every text cell of every change is converted with `write_json` by its
//!    column's type OID (which the input chooses through Relation messages), and the output
//!    must be valid JSON (json/jsonb cells excepted: their text is copied as it is).
//!
//! The text is also converted directly for a set of OIDs (scalars, arrays, timestamps) so
//! that the value parsers get arbitrary strings without the message framing around them.
//! `wal/fuzz/corpus` and `wal/fuzz/artifacts` are git-ignored.

#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_wal::change::{Assembler, Event};
use realtime_wal::pgoutput::{self, Cell};
use realtime_wal::value::{self, write_json};

/// Types whose text is copied verbatim (Postgres guarantees it is JSON).
fn copies_text(oid: u32) -> bool {
    oid == value::JSON || oid == value::JSONB
}

fn check_json(oid: u32, text: &str) {
    let mut out = Vec::new();
    write_json(oid, text, &mut out);
    if copies_text(oid) {
        return;
    }
    // Arrays of json/jsonb also copy their elements.
    if matches!(value::element_type(oid), Some(e) if copies_text(e)) {
        return;
    }
    let s = std::str::from_utf8(&out).expect("write_json wrote invalid UTF-8");
    if serde_json::from_str::<Box<serde_json::value::RawValue>>(s).is_err() {
        panic!("type {oid}: {text:?} gave invalid JSON {s:?}");
    }
    // Linear output: escaping at most sextuples a byte (\u00XX) plus a little framing; float
    // expansion is capped at a few hundred digits.
    assert!(out.len() <= 6 * text.len() + 1024, "type {oid}: {} bytes for {} bytes of text", out.len(), text.len());
}

const OIDS: &[u32] = &[
    16, 17, 20, 21, 22, 23, 25, 26, 30, 700, 701, 1700, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 1000, 1001,
    1007, 1009, 1016, 1020, 1022, 1115, 1182, 1185, 1231, 2951, 99999,
];

fuzz_target!(|data: &[u8]| {
    // 1. One message.
    if let Ok(msg) = pgoutput::decode(data) {
        let mut again = Vec::new();
        pgoutput::encode(&msg, &mut again);
        assert_eq!(pgoutput::decode(&again).ok(), Some(msg));
    }

    // 2. A length-prefixed stream through the assembler.
    let mut assembler = Assembler::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(body) = rest.get(2..2 + len) else { break };
        rest = &rest[2 + len..];
        let Ok(msg) = pgoutput::decode(body) else { continue };
        let Ok(Some(Event::Change(change))) = assembler.push(msg) else { continue };
        let tuples = change.new.iter().chain(change.old.as_ref().map(|o| o.tuple()));
        for tuple in tuples {
            for (cell, column) in tuple.0.iter().zip(&change.relation.columns) {
                if let Cell::Text(b) = cell {
                    if let Ok(text) = std::str::from_utf8(b) {
                        check_json(column.type_oid, text);
                    }
                }
            }
        }
    }

    // 3. The whole input as a value of various types.
    if let Ok(text) = std::str::from_utf8(data) {
        for &oid in OIDS {
            check_json(oid, text);
        }
    }
});
