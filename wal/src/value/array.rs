//! Array literals (`array_out` text) and int2vector/oidvector → JSON arrays.

use super::{write_string, write_value, Context, BOX};

/// Postgres' limit on array dimensions (MAXDIM); deeper literals are not arrays it sent.
const MAX_ARRAY_DEPTH: usize = 6;

/// int2vector/oidvector: space-separated elements, a JSON array for `to_jsonb`.
pub(super) fn write_vector(text: &str, elem: u32, out: &mut Vec<u8>) {
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
pub(super) fn write_array(elem: u32, text: &str, out: &mut Vec<u8>) {
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
