//! A column value in pgoutput's text format → the JSON Supabase Realtime delivers for it.
//!
//! # What Supabase delivers
//!
//! Supabase does not apply `to_jsonb` to the value directly. Its poller reads the slot with
//! wal2json (format 2, `pg_logical_slot_get_changes`, supabase/realtime
//! `priv/repo/tenant_schema/realtime/functions/list_changes.sql`), and `apply_rls.sql` turns
//! each wal2json column back into SQL text with `(x->'value') #>> '{}'` and passes it to
//! `realtime.cast(text, regtype)`, which is `to_jsonb(text::type)` except for bytea (see
//! `cast.sql`). The resulting jsonb is sent verbatim (`wal->>'record'`, wrapped in a
//! `Jason.Fragment`). For almost every type that equals `to_jsonb(value)`; the round trip
//! through wal2json (eulerto/wal2json `wal2json.c`, `pg_decode_write_value`) changes two cases
//! of a **column** value (not of array elements, which wal2json passes on as one string):
//!
//! * float4/float8/numeric `NaN`, `Infinity`, `-Infinity`: wal2json writes JSON `null` ("The
//!   NaN and Infinity are not valid JSON symbols"), `#>>` makes that SQL NULL and
//!   `realtime.cast(NULL, …)` stays NULL, so clients get `null` (`to_jsonb` alone would give
//!   the strings `"NaN"`/`"Infinity"`). Inside arrays they are strings: `["NaN", 1]`.
//! * bytea: wal2json writes the hex text without its `\x` ("string is \"\\x54617069727573\",
//!   start after \\x"), and since supabase/realtime migration
//!   `20260218120000_fix_bytea_double_encoding_in_cast` `realtime.cast` returns
//!   `to_jsonb(val)` for bytea, i.e. that text as a JSON string. So `'\x0102030405'::bytea`
//!   is delivered as `"0102030405"`, exactly what supabase/realtime
//!   `test/integration/rt_channel/postgres_changes_test.exs` ("handle insert with bytea data
//!   without double-encoding") asserts for the inserted binary `<<1, 2, 3, 4, 5>>`. (Before
//!   that migration the text was cast back to bytea and double-encoded; `"\\x0102…"` is what
//!   `to_jsonb` alone gives, and what bytea elements of arrays still give.)
//!
//! One more difference is a Supabase bug that is deliberately **not** reproduced:
//! `realtime.cast` casts to the column's `regtype`, which has no type modifier, so `char(5)`
//! values are cast to `character` = `char(1)` and arrive cut to one character (`'ab   '` →
//! `"a"`), and `bit(3)` values to `bit(1)`. Here they keep their full text, as `to_jsonb`
//! gives it (`tests/decode.rs` checks that Supabase's pipeline still truncates).
//!
//! Everything else follows `to_jsonb` (PostgreSQL `jsonb.c`, `datum_to_jsonb`), assuming the
//! walsender session runs with `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits` ≥ 1,
//! `IntervalStyle=postgres` and `bytea_output=hex` (the defaults, except the time zone):
//!
//! * int2/int4/int8/numeric → JSON numbers with the exact digits (int8 beyond 2^53 too);
//!   float4/float8 → numbers as `numeric` prints them (`1e+100` → `1` and 100 zeros,
//!   `1.5e-07` → `0.00000015`, `-0` → `0`), since jsonb stores numbers as numeric.
//! * bool → `true`/`false`; json/jsonb → the JSON itself.
//! * timestamptz → `"2025-11-03T09:32:55.123+00:00"` (`T`, offset with minutes); timestamp →
//!   `"2025-11-03T09:32:55.123"`; BC dates keep their ` BC` suffix; `infinity` stays.
//! * date, time, timetz (`"12:00:00-08"`: `to_jsonb` does not add minutes there), interval,
//!   oid (a string: `to_jsonb(1::oid)` is `"1"`), uuid, text types, enums and every other
//!   type → their text as a JSON string.
//! * arrays → JSON arrays (nested for multi-dimensional ones, `[]` when empty, `[0:1]=`
//!   bounds dropped), each element converted like `to_jsonb` converts it.
//!
//! Types this module cannot know by OID alone: domains (pass the base type's OID), arrays of
//! non-built-in types (use [`write_array_json`] with the element type), composite types
//! (`to_jsonb` makes objects; here they become strings) and extension types with a cast to
//! json (hstore…; strings here).
//!
//! Every path writes valid JSON for any input text, except json/jsonb values (columns and
//! array elements), whose text is copied as it is (Postgres only ever sends valid JSON for
//! them; re-parsing every document per change would cost more than it protects). Malformed
//! text of any other type (which Postgres does not produce) is written as a JSON string.
//! Output size is linear in the input: float exponents that would expand beyond what float8
//! can print are left as strings.

mod array;
mod builtin_types;
mod number;
#[cfg(test)]
mod tests;

use self::array::{write_array, write_vector};
pub use self::builtin_types::{element_type, type_name};
use self::number::write_number;

/// `bool`.
pub const BOOL: u32 = 16;
/// `bytea`.
pub const BYTEA: u32 = 17;
/// `int8`.
pub const INT8: u32 = 20;
/// `int2`.
pub const INT2: u32 = 21;
/// `int2vector`.
pub const INT2VECTOR: u32 = 22;
/// `int4`.
pub const INT4: u32 = 23;
/// `text`.
pub const TEXT: u32 = 25;
/// `oid`.
pub const OID: u32 = 26;
/// `oidvector`.
pub const OIDVECTOR: u32 = 30;
/// `json`.
pub const JSON: u32 = 114;
/// `box` (its arrays use `;` between elements).
pub const BOX: u32 = 603;
/// `float4`.
pub const FLOAT4: u32 = 700;
/// `float8`.
pub const FLOAT8: u32 = 701;
/// `varchar`.
pub const VARCHAR: u32 = 1043;
/// `date`.
pub const DATE: u32 = 1082;
/// `time`.
pub const TIME: u32 = 1083;
/// `timestamp`.
pub const TIMESTAMP: u32 = 1114;
/// `timestamptz`.
pub const TIMESTAMPTZ: u32 = 1184;
/// `interval`.
pub const INTERVAL: u32 = 1186;
/// `timetz`.
pub const TIMETZ: u32 = 1266;
/// `numeric`.
pub const NUMERIC: u32 = 1700;
/// `uuid`.
pub const UUID: u32 = 2950;
/// `jsonb`.
pub const JSONB: u32 = 3802;

/// Appends the JSON Supabase delivers for a column of type `type_oid` whose pgoutput text is
/// `text` (SQL NULL is the caller's `null`; this never sees it).
pub fn write_json(type_oid: u32, text: &str, out: &mut Vec<u8>) {
    write_value(type_oid, text, Context::Column, out);
}

/// Appends the JSON for an array whose elements have type `element_oid`: for arrays of types
/// this module does not know (arrays of enums, domains…), with the element type taken from
/// the catalog (`pg_type.typelem`). Malformed literals are written as a JSON string.
pub fn write_array_json(element_oid: u32, text: &str, out: &mut Vec<u8>) {
    write_array(element_oid, text, out);
}

/// Where a value sits, which decides the two cases where Supabase's wal2json round trip
/// differs from `to_jsonb` (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A column value, through wal2json + `realtime.cast`.
    Column,
    /// An element of an array (the array goes through wal2json as one string).
    Element,
}

fn write_value(type_oid: u32, text: &str, cx: Context, out: &mut Vec<u8>) {
    match type_oid {
        INT2 | INT4 | INT8 => write_number(text, out),
        FLOAT4 | FLOAT8 | NUMERIC => {
            if matches!(text, "NaN" | "Infinity" | "-Infinity") {
                match cx {
                    Context::Column => out.extend_from_slice(b"null"),
                    Context::Element => write_string(text, out),
                }
            } else {
                write_number(text, out);
            }
        }
        BOOL => match text {
            "t" => out.extend_from_slice(b"true"),
            "f" => out.extend_from_slice(b"false"),
            _ => write_string(text, out),
        },
        // Already JSON (Postgres validated it on input); copied without re-parsing because
        // this runs per cell per change.
        JSON | JSONB => out.extend_from_slice(text.as_bytes()),
        BYTEA => match (cx, text.strip_prefix("\\x")) {
            (Context::Column, Some(hex)) => write_string(hex, out),
            _ => write_string(text, out),
        },
        TIMESTAMPTZ => write_timestamp(text, true, out),
        TIMESTAMP => write_timestamp(text, false, out),
        INT2VECTOR => write_vector(text, INT2, out),
        OIDVECTOR => write_vector(text, OID, out),
        _ => match element_type(type_oid) {
            Some(elem) => write_array(elem, text, out),
            None => write_string(text, out),
        },
    }
}

/// Appends `s` as a JSON string, escaped the way Postgres' `escape_json` does (so the bytes
/// match what Supabase sends, not only the value): `\b \f \n \r \t \" \\` and `\u00XX` for the
/// other control characters; everything else, including non-ASCII, is copied.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// timestamptz/timestamp in `to_jsonb`'s ISO 8601 form: the ISO `DateStyle` output with `T`
/// between date and time and, for timestamptz, an offset that always has minutes (`+00` →
/// `+00:00`; `+05:30` and seconds offsets like `+05:53:28` are kept). ` BC` stays at the end
/// and `infinity`/`-infinity` stay as they are, as in Postgres' `JsonEncodeDateTime`.
fn write_timestamp(text: &str, with_zone: bool, out: &mut Vec<u8>) {
    let Some((date, rest)) = text.split_once(' ') else {
        // infinity, -infinity (or something Postgres would not send).
        write_string(text, out);
        return;
    };
    let (time_zone, bc) = match rest.strip_suffix(" BC") {
        Some(t) => (t, " BC"),
        None => (rest, ""),
    };
    out.push(b'"');
    let start = out.len();
    out.extend_from_slice(date.as_bytes());
    out.push(b'T');
    out.extend_from_slice(time_zone.as_bytes());
    if with_zone {
        // The offset starts at the first sign; the time before it has none.
        if let Some(p) = time_zone.find(['+', '-']) {
            if !time_zone[p..].contains(':') {
                out.extend_from_slice(b":00");
            }
        }
    }
    out.extend_from_slice(bc.as_bytes());
    // Postgres output is plain ASCII without quotes or backslashes; anything else is not a
    // timestamp it sent, so it is written back as an escaped string instead.
    if out[start..].iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        out.truncate(start - 1);
        write_string(text, out);
        return;
    }
    out.push(b'"');
}
