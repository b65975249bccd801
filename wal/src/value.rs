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

/// Postgres' limit on array dimensions (MAXDIM); deeper literals are not arrays it sent.
const MAX_ARRAY_DEPTH: usize = 6;
/// The largest decimal exponent a float4/float8 text can carry (5e-324 is the smallest
/// float8); beyond it the expansion to plain digits is refused, keeping output linear.
const MAX_FLOAT_EXPONENT: i64 = 400;

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

/// A number the way jsonb prints it (`numeric_out(numeric_in(text))`): integers and numeric
/// output are copied as they are; anything with an exponent, a sign on zero, a `+` or leading
/// zeros is normalised. Text that is not a number at all becomes a string, as `to_jsonb`
/// does for numeric output that is not a valid JSON number.
fn write_number(text: &str, out: &mut Vec<u8>) {
    if is_plain_json_number(text.as_bytes()) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    match Decimal::parse(text.as_bytes()) {
        Some(d) if d.exponent.abs() <= MAX_FLOAT_EXPONENT => d.write(out),
        _ => write_string(text, out),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` and not a negative zero: already what jsonb would print.
fn is_plain_json_number(b: &[u8]) -> bool {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(p) => (&digits[..p], Some(&digits[p + 1..])),
        None => (digits, None),
    };
    let int_ok = match int {
        [] => false,
        [b'0'] => true,
        [first, ..] => *first != b'0' && int.iter().all(u8::is_ascii_digit),
    };
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit));
    // numeric never prints "-0" or "-0.000"; those need normalising.
    let nonzero = !neg || digits.iter().any(|&c| (b'1'..=b'9').contains(&c));
    int_ok && frac_ok && nonzero
}

/// A decimal in parts: `[+-]digits[.digits][e[+-]digits]`, as float output and numeric input
/// spell it.
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exponent: i64,
}

impl<'a> Decimal<'a> {
    fn parse(b: &'a [u8]) -> Option<Decimal<'a>> {
        let (negative, b) = match b.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, b),
        };
        let (mantissa, exponent) = match b.iter().position(|&c| c == b'e' || c == b'E') {
            Some(p) => {
                let e = std::str::from_utf8(&b[p + 1..]).ok()?;
                // Bounded before parsing so that a long digit string cannot overflow.
                let digits = e.trim_start_matches(['+', '-']);
                if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                (&b[..p], e.parse::<i64>().ok()?)
            }
            None => (b, 0),
        };
        let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
            Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
            None => (mantissa, &mantissa[mantissa.len()..]),
        };
        if (int.is_empty() && frac.is_empty())
            || !int.iter().all(u8::is_ascii_digit)
            || !frac.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        Some(Decimal {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// Writes the plain decimal `numeric_out` would print: the value with
    /// `max(0, frac digits - exponent)` fractional digits, no leading zeros, no sign on zero.
    fn write(&self, out: &mut Vec<u8>) {
        let digit = |i: i64| -> u8 {
            // Digit i of int ++ frac, zero outside it.
            let Ok(i) = usize::try_from(i) else { return b'0' };
            if i < self.int.len() {
                self.int[i]
            } else {
                self.frac.get(i - self.int.len()).copied().unwrap_or(b'0')
            }
        };
        let len = (self.int.len() + self.frac.len()) as i64;
        let point = self.int.len() as i64 + self.exponent;
        let scale = (self.frac.len() as i64 - self.exponent).max(0);
        // Integer part: digits [0, point); fraction: [point, point + scale).
        let first_nonzero = (0..point.min(len)).find(|&i| digit(i) != b'0');
        let is_zero = (0..len).all(|i| digit(i) == b'0');
        if self.negative && !is_zero {
            out.push(b'-');
        }
        match first_nonzero {
            Some(start) => (start..point).for_each(|i| out.push(digit(i))),
            None => out.push(b'0'),
        }
        if scale > 0 {
            out.push(b'.');
            (point..point + scale).for_each(|i| out.push(digit(i)));
        }
    }
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

/// int2vector/oidvector: space-separated elements, a JSON array for `to_jsonb`.
fn write_vector(text: &str, elem: u32, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, e) in text.split(' ').filter(|e| !e.is_empty()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(elem, e, Context::Element, out);
    }
    out.push(b']');
}

/// An array literal (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={1,2}`, `{}`) → a JSON array.
/// Falls back to a JSON string for text that `array_out` would not produce.
fn write_array(elem: u32, text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    let delim = if elem == BOX { b';' } else { b',' };
    let mut p = ArrayParser {
        s: text.as_bytes(),
        pos: 0,
        delim,
        elem,
        scratch: Vec::new(),
    };
    if p.literal(out).is_none() {
        out.truncate(start);
        write_string(text, out);
    }
}

/// A recursive-descent reader of `array_in`'s syntax. `None` means malformed (the caller
/// rolls the output back). Depth is capped, so recursion is bounded.
struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    delim: u8,
    elem: u32,
    /// Unescaped element text, reused between elements.
    scratch: Vec<u8>,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.skip_ws();
        if self.peek() == Some(b'[') {
            // Dimension decoration `[lo:hi][lo:hi]=`: to_jsonb ignores the bounds.
            let eq = self.s.iter().position(|&c| c == b'=')?;
            if !self.s[self.pos..eq]
                .iter()
                .all(|&c| matches!(c, b'[' | b']' | b':' | b'-' | b'+' | b'0'..=b'9') || c.is_ascii_whitespace())
            {
                return None;
            }
            self.pos = eq + 1;
            self.skip_ws();
        }
        self.array(out, 1)?;
        self.skip_ws();
        (self.pos == self.s.len()).then_some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_ARRAY_DEPTH || self.peek() != Some(b'{') {
            return None;
        }
        self.pos += 1;
        out.push(b'[');
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push(b']');
            return Some(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(b',');
            }
            first = false;
            self.skip_ws();
            if self.peek() == Some(b'{') {
                self.array(out, depth + 1)?;
            } else {
                self.element(out)?;
            }
            self.skip_ws();
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    out.push(b']');
                    return Some(());
                }
                c if c == self.delim => self.pos += 1,
                _ => return None,
            }
        }
    }

    /// One element: `"quoted \" text"`, `NULL`, or unquoted text up to the delimiter or `}`
    /// (backslash escapes allowed in both forms, surrounding whitespace dropped).
    fn element(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.scratch.clear();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            loop {
                match self.peek()? {
                    b'"' => {
                        self.pos += 1;
                        break;
                    }
                    b'\\' => {
                        self.scratch.push(*self.s.get(self.pos + 1)?);
                        self.pos += 2;
                    }
                    c => {
                        self.scratch.push(c);
                        self.pos += 1;
                    }
                }
            }
        } else {
            let mut escaped = false;
            // Length of scratch up to the last character that is not unescaped whitespace.
            let mut keep = 0;
            loop {
                match self.peek()? {
                    b'}' => break,
                    c if c == self.delim => break,
                    b'"' | b'{' => return None,
                    b'\\' => {
                        self.scratch.push(*self.s.get(self.pos + 1)?);
                        self.pos += 2;
                        escaped = true;
                        keep = self.scratch.len();
                    }
                    c => {
                        self.scratch.push(c);
                        self.pos += 1;
                        if !c.is_ascii_whitespace() {
                            keep = self.scratch.len();
                        }
                    }
                }
            }
            self.scratch.truncate(keep);
            if self.scratch.is_empty() {
                return None;
            }
            if !escaped && self.scratch.eq_ignore_ascii_case(b"NULL") {
                out.extend_from_slice(b"null");
                return Some(());
            }
        }
        // Splitting at ASCII bytes and dropping escape backslashes keeps UTF-8 intact.
        let text = std::str::from_utf8(&self.scratch).ok()?;
        write_value(self.elem, text, Context::Element, out);
        Some(())
    }
}

/// `pg_type.typname` of a built-in type (OID below 16384): `int4`, `timestamptz`, `_text`…
/// User-defined types (enums, domains, composites, extension types) need the catalog.
pub fn type_name(type_oid: u32) -> Option<&'static str> {
    lookup(type_oid).map(|t| t.1)
}

/// The element type of a built-in array type (`_int4` 1007 → `int4` 23; also `int2vector`
/// and `oidvector`, which are arrays too); `None` for other types.
pub fn element_type(array_oid: u32) -> Option<u32> {
    lookup(array_oid).map(|t| t.2).filter(|&e| e != 0)
}

fn lookup(oid: u32) -> Option<&'static (u32, &'static str, u32)> {
    BUILTIN_TYPES
        .binary_search_by_key(&oid, |t| t.0)
        .ok()
        .and_then(|i| BUILTIN_TYPES.get(i))
}

/// (oid, typname, element oid or 0) of PostgreSQL 15's built-in base, range and multirange
/// types, sorted by oid; generated from `pg_type` (arrays of catalog row types left out):
/// `select oid, typname, case when typsubscript = 'array_subscript_handler'::regproc and
/// typlen = -1 then typelem else 0 end from pg_type where oid < 16384 and typtype in
/// ('b','r','m') …`. Built-in OIDs are stable across major versions.
static BUILTIN_TYPES: &[(u32, &str, u32)] = &[
    (16, "bool", 0),
    (17, "bytea", 0),
    (18, "char", 0),
    (19, "name", 0),
    (20, "int8", 0),
    (21, "int2", 0),
    (22, "int2vector", 21),
    (23, "int4", 0),
    (24, "regproc", 0),
    (25, "text", 0),
    (26, "oid", 0),
    (27, "tid", 0),
    (28, "xid", 0),
    (29, "cid", 0),
    (30, "oidvector", 26),
    (114, "json", 0),
    (142, "xml", 0),
    (143, "_xml", 142),
    (194, "pg_node_tree", 0),
    (199, "_json", 114),
    (271, "_xid8", 5069),
    (600, "point", 0),
    (601, "lseg", 0),
    (602, "path", 0),
    (603, "box", 0),
    (604, "polygon", 0),
    (628, "line", 0),
    (629, "_line", 628),
    (650, "cidr", 0),
    (651, "_cidr", 650),
    (700, "float4", 0),
    (701, "float8", 0),
    (718, "circle", 0),
    (719, "_circle", 718),
    (774, "macaddr8", 0),
    (775, "_macaddr8", 774),
    (790, "money", 0),
    (791, "_money", 790),
    (829, "macaddr", 0),
    (869, "inet", 0),
    (1000, "_bool", 16),
    (1001, "_bytea", 17),
    (1002, "_char", 18),
    (1003, "_name", 19),
    (1005, "_int2", 21),
    (1006, "_int2vector", 22),
    (1007, "_int4", 23),
    (1008, "_regproc", 24),
    (1009, "_text", 25),
    (1010, "_tid", 27),
    (1011, "_xid", 28),
    (1012, "_cid", 29),
    (1013, "_oidvector", 30),
    (1014, "_bpchar", 1042),
    (1015, "_varchar", 1043),
    (1016, "_int8", 20),
    (1017, "_point", 600),
    (1018, "_lseg", 601),
    (1019, "_path", 602),
    (1020, "_box", 603),
    (1021, "_float4", 700),
    (1022, "_float8", 701),
    (1027, "_polygon", 604),
    (1028, "_oid", 26),
    (1033, "aclitem", 0),
    (1034, "_aclitem", 1033),
    (1040, "_macaddr", 829),
    (1041, "_inet", 869),
    (1042, "bpchar", 0),
    (1043, "varchar", 0),
    (1082, "date", 0),
    (1083, "time", 0),
    (1114, "timestamp", 0),
    (1115, "_timestamp", 1114),
    (1182, "_date", 1082),
    (1183, "_time", 1083),
    (1184, "timestamptz", 0),
    (1185, "_timestamptz", 1184),
    (1186, "interval", 0),
    (1187, "_interval", 1186),
    (1231, "_numeric", 1700),
    (1263, "_cstring", 2275),
    (1266, "timetz", 0),
    (1270, "_timetz", 1266),
    (1560, "bit", 0),
    (1561, "_bit", 1560),
    (1562, "varbit", 0),
    (1563, "_varbit", 1562),
    (1700, "numeric", 0),
    (1790, "refcursor", 0),
    (2201, "_refcursor", 1790),
    (2202, "regprocedure", 0),
    (2203, "regoper", 0),
    (2204, "regoperator", 0),
    (2205, "regclass", 0),
    (2206, "regtype", 0),
    (2207, "_regprocedure", 2202),
    (2208, "_regoper", 2203),
    (2209, "_regoperator", 2204),
    (2210, "_regclass", 2205),
    (2211, "_regtype", 2206),
    (2949, "_txid_snapshot", 2970),
    (2950, "uuid", 0),
    (2951, "_uuid", 2950),
    (2970, "txid_snapshot", 0),
    (3220, "pg_lsn", 0),
    (3221, "_pg_lsn", 3220),
    (3361, "pg_ndistinct", 0),
    (3402, "pg_dependencies", 0),
    (3614, "tsvector", 0),
    (3615, "tsquery", 0),
    (3642, "gtsvector", 0),
    (3643, "_tsvector", 3614),
    (3644, "_gtsvector", 3642),
    (3645, "_tsquery", 3615),
    (3734, "regconfig", 0),
    (3735, "_regconfig", 3734),
    (3769, "regdictionary", 0),
    (3770, "_regdictionary", 3769),
    (3802, "jsonb", 0),
    (3807, "_jsonb", 3802),
    (3904, "int4range", 0),
    (3905, "_int4range", 3904),
    (3906, "numrange", 0),
    (3907, "_numrange", 3906),
    (3908, "tsrange", 0),
    (3909, "_tsrange", 3908),
    (3910, "tstzrange", 0),
    (3911, "_tstzrange", 3910),
    (3912, "daterange", 0),
    (3913, "_daterange", 3912),
    (3926, "int8range", 0),
    (3927, "_int8range", 3926),
    (4072, "jsonpath", 0),
    (4073, "_jsonpath", 4072),
    (4089, "regnamespace", 0),
    (4090, "_regnamespace", 4089),
    (4096, "regrole", 0),
    (4097, "_regrole", 4096),
    (4191, "regcollation", 0),
    (4192, "_regcollation", 4191),
    (4451, "int4multirange", 0),
    (4532, "nummultirange", 0),
    (4533, "tsmultirange", 0),
    (4534, "tstzmultirange", 0),
    (4535, "datemultirange", 0),
    (4536, "int8multirange", 0),
    (4600, "pg_brin_bloom_summary", 0),
    (4601, "pg_brin_minmax_multi_summary", 0),
    (5017, "pg_mcv_list", 0),
    (5038, "pg_snapshot", 0),
    (5039, "_pg_snapshot", 5038),
    (5069, "xid8", 0),
    (6150, "_int4multirange", 4451),
    (6151, "_nummultirange", 4532),
    (6152, "_tsmultirange", 4533),
    (6153, "_tstzmultirange", 4534),
    (6155, "_datemultirange", 4535),
    (6157, "_int8multirange", 4536),
    (13220, "_cardinal_number", 13221),
    (13223, "_character_data", 13224),
    (13225, "_sql_identifier", 13226),
    (13231, "_time_stamp", 13232),
    (13233, "_yes_or_no", 13234),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn json(oid: u32, text: &str) -> String {
        let mut v = Vec::new();
        write_json(oid, text, &mut v);
        String::from_utf8(v).unwrap()
    }

    fn valid(oid: u32, text: &str) -> serde_json::Value {
        let s = json(oid, text);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{oid} {text:?} → {s:?}: {e}"))
    }

    #[test]
    fn integers() {
        for oid in [INT2, INT4, INT8] {
            assert_eq!(json(oid, "0"), "0");
            assert_eq!(json(oid, "-32768"), "-32768");
            assert_eq!(json(oid, "42"), "42");
        }
        // Beyond 2^53: exact digits, not a float.
        assert_eq!(json(INT8, "9223372036854775807"), "9223372036854775807");
        assert_eq!(json(INT8, "-9223372036854775808"), "-9223372036854775808");
    }

    #[test]
    fn oid_is_a_string_like_to_jsonb() {
        assert_eq!(json(OID, "16384"), "\"16384\"");
    }

    #[test]
    fn floats_print_like_numeric() {
        assert_eq!(json(FLOAT8, "1.5"), "1.5");
        assert_eq!(json(FLOAT8, "-0"), "0");
        assert_eq!(json(FLOAT8, "0"), "0");
        assert_eq!(json(FLOAT8, "1e+100"), format!("1{}", "0".repeat(100)));
        assert_eq!(json(FLOAT8, "1.5e-07"), "0.00000015");
        assert_eq!(json(FLOAT8, "-1.5e-07"), "-0.00000015");
        assert_eq!(json(FLOAT8, "1e-05"), "0.00001");
        assert_eq!(json(FLOAT8, "1.2345e+2"), "123.45");
        assert_eq!(json(FLOAT8, "1.2e+5"), "120000");
        assert_eq!(json(FLOAT8, "1.2345678901234567e+19"), "12345678901234567000");
        assert_eq!(json(FLOAT8, "5e-324"), format!("0.{}5", "0".repeat(323)));
        assert_eq!(json(FLOAT8, "1.7976931348623157e+308").len(), 309);
        assert_eq!(json(FLOAT4, "3.4028235e+38"), "340282350000000000000000000000000000000");
        assert_eq!(json(FLOAT4, "0.1"), "0.1");
        assert_eq!(json(FLOAT8, "123456.789"), "123456.789");
    }

    #[test]
    fn special_floats_are_null_as_columns_and_strings_in_arrays() {
        for oid in [FLOAT4, FLOAT8, NUMERIC] {
            for s in ["NaN", "Infinity", "-Infinity"] {
                assert_eq!(json(oid, s), "null", "{oid} {s}");
            }
        }
        assert_eq!(
            json(1022, "{NaN,Infinity,-Infinity,1.5}"),
            r#"["NaN","Infinity","-Infinity",1.5]"#
        );
        assert_eq!(json(1231, "{NaN,-Infinity}"), r#"["NaN","-Infinity"]"#);
    }

    #[test]
    fn numeric_keeps_its_digits() {
        assert_eq!(json(NUMERIC, "1.10"), "1.10");
        assert_eq!(json(NUMERIC, "0.000"), "0.000");
        assert_eq!(json(NUMERIC, "-0.5"), "-0.5");
        let long = format!("{}.{}", "9".repeat(200), "1".repeat(100));
        assert_eq!(json(NUMERIC, &long), long);
    }

    #[test]
    fn malformed_numbers_become_strings_or_normalised_numbers() {
        assert_eq!(json(INT4, "abc"), "\"abc\"");
        assert_eq!(json(INT4, ""), "\"\"");
        assert_eq!(json(INT4, "-"), "\"-\"");
        assert_eq!(json(INT4, "007"), "7");
        assert_eq!(json(INT4, "+7"), "7");
        assert_eq!(json(NUMERIC, "-0.00"), "0.00");
        assert_eq!(json(NUMERIC, ".5"), "0.5");
        assert_eq!(json(NUMERIC, "5."), "5");
        assert_eq!(json(NUMERIC, "1e999999999"), "\"1e999999999\"");
        assert_eq!(json(FLOAT8, "1e401"), "\"1e401\"");
        assert_eq!(json(FLOAT8, "1e"), "\"1e\"");
        assert_eq!(json(FLOAT8, "."), "\".\"");
        assert_eq!(json(FLOAT8, "1.2.3"), "\"1.2.3\"");
        assert_eq!(json(FLOAT8, "nan"), "\"nan\"");
    }

    #[test]
    fn booleans_and_json() {
        assert_eq!(json(BOOL, "t"), "true");
        assert_eq!(json(BOOL, "f"), "false");
        assert_eq!(json(BOOL, "x"), "\"x\"");
        assert_eq!(json(JSONB, r#"{"a": [1, 2.5, null]}"#), r#"{"a": [1, 2.5, null]}"#);
        assert_eq!(json(JSON, " [1,2] "), " [1,2] ");
        assert_eq!(json(JSON, "\"s\""), "\"s\"");
    }

    #[test]
    fn strings_escape_like_postgres() {
        assert_eq!(json(TEXT, "hello"), "\"hello\"");
        assert_eq!(json(TEXT, ""), "\"\"");
        assert_eq!(json(TEXT, "a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json(TEXT, "\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(json(TEXT, "\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(json(TEXT, "héllo ✓ 😀"), "\"héllo ✓ 😀\"");
        assert_eq!(json(TEXT, "\u{7f}"), "\"\u{7f}\"");
        assert_eq!(json(VARCHAR, "x"), "\"x\"");
        assert_eq!(
            json(UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        // Unknown OIDs (enums, extension types): their text as a string.
        assert_eq!(json(99999, "happy"), "\"happy\"");
    }

    #[test]
    fn bytea_columns_drop_the_hex_prefix_but_elements_keep_it() {
        assert_eq!(json(BYTEA, "\\x0102030405"), "\"0102030405\"");
        assert_eq!(json(BYTEA, "\\x"), "\"\"");
        // escape format (bytea_output=escape) is not what the stream uses; kept whole.
        assert_eq!(json(BYTEA, "abc"), "\"abc\"");
        assert_eq!(json(1001, r#"{"\\x01",NULL}"#), r#"["\\x01",null]"#);
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            json(TIMESTAMPTZ, "2025-11-03 09:32:55.123+00"),
            "\"2025-11-03T09:32:55.123+00:00\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "2025-11-03 09:32:55+00"),
            "\"2025-11-03T09:32:55+00:00\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "2025-11-03 09:32:55.123456+05:30"),
            "\"2025-11-03T09:32:55.123456+05:30\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "2025-11-03 09:32:55-08"),
            "\"2025-11-03T09:32:55-08:00\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "1900-01-01 00:00:00+05:53:28"),
            "\"1900-01-01T00:00:00+05:53:28\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"),
            "\"0044-03-15T12:00:00+00:00 BC\""
        );
        assert_eq!(
            json(TIMESTAMPTZ, "10000-01-01 00:00:00+00"),
            "\"10000-01-01T00:00:00+00:00\""
        );
        assert_eq!(json(TIMESTAMPTZ, "infinity"), "\"infinity\"");
        assert_eq!(json(TIMESTAMPTZ, "-infinity"), "\"-infinity\"");
        assert_eq!(
            json(TIMESTAMP, "2025-11-03 09:32:55.123"),
            "\"2025-11-03T09:32:55.123\""
        );
        assert_eq!(json(TIMESTAMP, "0044-03-15 12:00:00 BC"), "\"0044-03-15T12:00:00 BC\"");
        assert_eq!(json(TIMESTAMP, "infinity"), "\"infinity\"");
        // Not something Postgres sends: still valid JSON.
        assert_eq!(json(TIMESTAMPTZ, "a \"b"), r#""a \"b""#);
        valid(TIMESTAMPTZ, "x\n y");
    }

    #[test]
    fn other_date_time_types_are_their_text() {
        assert_eq!(json(DATE, "2025-11-03"), "\"2025-11-03\"");
        assert_eq!(json(DATE, "0044-03-15 BC"), "\"0044-03-15 BC\"");
        assert_eq!(json(TIME, "09:32:55.123"), "\"09:32:55.123\"");
        assert_eq!(json(TIMETZ, "12:00:00-08"), "\"12:00:00-08\"");
        assert_eq!(json(INTERVAL, "1 day 02:00:00"), "\"1 day 02:00:00\"");
    }

    #[test]
    fn arrays() {
        assert_eq!(json(1007, "{1,2,3}"), "[1,2,3]");
        assert_eq!(json(1007, "{}"), "[]");
        assert_eq!(json(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(json(1007, "[1:1][-2:-1]={{1,2}}"), "[[1,2]]");
        assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(
            json(1009, r#"{"a b","c\"d",NULL,"NULL",e\\f}"#),
            r#"["a b","c\"d",null,"NULL","e\\f"]"#
        );
        assert_eq!(json(1009, r#"{"",x}"#), r#"["","x"]"#);
        assert_eq!(json(1009, "{ a , b }"), r#"["a","b"]"#);
        assert_eq!(json(1009, "{null,Null}"), "[null,null]");
        assert_eq!(json(1009, r#"{"é✓",ü}"#), r#"["é✓","ü"]"#);
        assert_eq!(json(1016, "{9223372036854775807}"), "[9223372036854775807]");
        assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(json(1022, "{1e+100,-0}"), format!("[1{},0]", "0".repeat(100)));
        assert_eq!(json(1231, "{1.10,2}"), "[1.10,2]");
        assert_eq!(
            json(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#
        );
        assert_eq!(
            json(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#),
            r#"[{"a": 1},[1, 2],null]"#
        );
        assert_eq!(json(199, r#"{"{\"a\":1}"}"#), r#"[{"a":1}]"#);
        assert_eq!(
            json(1185, r#"{"2025-11-03 09:32:55.123+00","2025-11-03 10:00:00+05:30"}"#),
            r#"["2025-11-03T09:32:55.123+00:00","2025-11-03T10:00:00+05:30"]"#
        );
        assert_eq!(json(1115, r#"{"2025-11-03 09:32:55"}"#), r#"["2025-11-03T09:32:55"]"#);
        assert_eq!(json(1182, "{2025-11-03,infinity}"), r#"["2025-11-03","infinity"]"#);
        assert_eq!(json(1015, r#"{x,"y,z"}"#), r#"["x","y,z"]"#);
        assert_eq!(json(1014, r#"{"a  ",b}"#), r#"["a  ","b"]"#);
        assert_eq!(
            json(1020, "{(3,4),(1,2);(1,1),(0,0)}"),
            r#"["(3,4),(1,2)","(1,1),(0,0)"]"#
        );
        assert_eq!(json(INT2VECTOR, "1 2 3"), "[1,2,3]");
        assert_eq!(json(OIDVECTOR, "23 25"), r#"["23","25"]"#);
        assert_eq!(json(INT2VECTOR, ""), "[]");
    }

    #[test]
    fn arrays_of_user_types_by_element() {
        let mut v = Vec::new();
        write_array_json(99999, r#"{happy,"very sad"}"#, &mut v);
        assert_eq!(v, br#"["happy","very sad"]"#);
    }

    #[test]
    fn malformed_arrays_fall_back_to_strings() {
        for bad in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{1,2}x",
            "{{1}",
            "{\"a}",
            "{\\",
            "{a\"b}",
            "[1:2]{1,2}",
            "[x]={1}",
            "{,}",
            "{{{{{{{1}}}}}}}",
            "1,2",
            "{1}{2}",
            "{a{b}",
        ] {
            assert_eq!(json(1007, bad), serde_json::to_string(bad).unwrap(), "{bad:?}");
        }
        // Six dimensions is Postgres' maximum and still an array.
        assert_eq!(json(1007, "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
    }

    #[test]
    fn every_output_is_valid_json_for_odd_input() {
        let inputs = [
            "",
            " ",
            "\"",
            "\\",
            "{",
            "{\"\\\"\"}",
            "\u{0}",
            "NaN",
            "-",
            "e5",
            "1e-400",
            "{NULL}",
            "{\u{1}}",
            "2025-11-03 x\"",
            "[0:0]={\"\\\u{1}\"}",
        ];
        let oids = [
            BOOL,
            BYTEA,
            INT8,
            INT2,
            INT4,
            TEXT,
            OID,
            FLOAT4,
            FLOAT8,
            NUMERIC,
            DATE,
            TIME,
            TIMESTAMP,
            TIMESTAMPTZ,
            INTERVAL,
            TIMETZ,
            UUID,
            1000,
            1001,
            1007,
            1009,
            1016,
            1022,
            1115,
            1185,
            1231,
            2951,
            1020,
            INT2VECTOR,
            OIDVECTOR,
            12345,
        ];
        for oid in oids {
            for t in inputs {
                valid(oid, t);
            }
        }
    }

    #[test]
    fn type_names_and_elements() {
        assert_eq!(type_name(23), Some("int4"));
        assert_eq!(type_name(20), Some("int8"));
        assert_eq!(type_name(25), Some("text"));
        assert_eq!(type_name(16), Some("bool"));
        assert_eq!(type_name(1184), Some("timestamptz"));
        assert_eq!(type_name(2950), Some("uuid"));
        assert_eq!(type_name(3802), Some("jsonb"));
        assert_eq!(type_name(17), Some("bytea"));
        assert_eq!(type_name(1007), Some("_int4"));
        assert_eq!(type_name(1009), Some("_text"));
        assert_eq!(type_name(3904), Some("int4range"));
        assert_eq!(type_name(16384), None);
        assert_eq!(type_name(0), None);
        for (arr, elem) in [
            (1007, 23),
            (1009, 25),
            (1016, 20),
            (1000, 16),
            (1022, 701),
            (1231, 1700),
            (2951, 2950),
            (3807, 3802),
            (199, 114),
            (1185, 1184),
            (1115, 1114),
            (1182, 1082),
            (1015, 1043),
            (1014, 1042),
            (1001, 17),
        ] {
            assert_eq!(element_type(arr), Some(elem), "{arr}");
            assert_eq!(type_name(arr).map(|n| n.trim_start_matches('_')), type_name(elem));
        }
        assert_eq!(element_type(23), None);
        assert_eq!(element_type(99999), None);
        assert!(
            BUILTIN_TYPES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
    }
}
