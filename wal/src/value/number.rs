//! Numbers the way jsonb prints them.

use super::write_string;

/// The largest decimal exponent a float4/float8 text can carry (5e-324 is the smallest
/// float8); beyond it the expansion to plain digits is refused, keeping output linear.
const MAX_FLOAT_EXPONENT: i64 = 400;

/// A number the way jsonb prints it (`numeric_out(numeric_in(text))`): integers and numeric
/// output are copied as they are; anything with an exponent, a sign on zero, a `+` or leading
/// zeros is normalised. Text that is not a number at all becomes a string, as `to_jsonb`
/// does for numeric output that is not a valid JSON number.
pub(super) fn write_number(text: &str, out: &mut Vec<u8>) {
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
