//! Evaluating a subscription's filters against a row image, in process.
//!
//! Filter values were cast to the column type and printed back by Postgres at subscribe
//! time (see [`super::catalog::Catalog::canonical`]), and WAL values are printed by the
//! same output functions with the same settings, so equality is equality of canonical
//! texts. Ordering compares by type family: integers and decimals numerically, text as
//! bytes (the `C` collation), timestamps/dates/uuids by their fixed-format text.
//! SQL semantics: a NULL value matches nothing (even negated), except `is` and
//! `isdistinct`; a column missing from the image (unchanged TOAST) matches nothing.

use std::cmp::Ordering;

use realtime_protocol::filter::Op;
use regex::Regex;

/// How values of a column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// int2/int4/int8/oid.
    Integer,
    /// numeric, float4, float8.
    Decimal,
    /// bool (`t`/`f`).
    Bool,
    /// Anything else: compared as text.
    Text,
}

impl Family {
    /// The family of a type by `typname`.
    pub fn of(type_name: &str) -> Family {
        match type_name {
            "int2" | "int4" | "int8" | "oid" => Family::Integer,
            "numeric" | "float4" | "float8" => Family::Decimal,
            "bool" => Family::Bool,
            _ => Family::Text,
        }
    }
}

/// What a compiled condition compares against.
#[derive(Debug, Clone)]
pub enum Operand {
    /// One canonical value (`None` = the cast produced NULL).
    Value(Option<String>),
    /// `in`: canonical elements.
    List(Vec<Option<String>>),
    /// `is`: `null`, `true`, `false` or `unknown`.
    Is(IsValue),
    /// `like`/`ilike` pattern (lower-cased for ilike).
    Pattern(String),
    /// `match`/`imatch`.
    Regex(Regex),
}

/// The keyword of an `is` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    /// `is.null` (and `is.unknown`, which is NULL for booleans).
    Null,
    /// `is.true`
    True,
    /// `is.false`
    False,
}

/// A condition bound to a column of a table.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Index of the column in the table's columns.
    pub column: usize,
    /// Comparison family of that column.
    pub family: Family,
    /// Operator.
    pub op: Op,
    /// Right-hand side.
    pub operand: Operand,
    /// `not.`
    pub negate: bool,
}

/// A cell as the evaluator sees it: absent (unchanged TOAST), NULL, or canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// Not in the image.
    Missing,
    /// SQL NULL.
    Null,
    /// The value's text.
    Text(&'a str),
}

impl Compiled {
    /// True when the row passes this condition.
    pub fn matches(&self, cell: Cell<'_>) -> bool {
        let value = match cell {
            Cell::Missing => return false,
            Cell::Null => None,
            Cell::Text(t) => Some(t),
        };
        // `is` and `isdistinct` are the only operators that are never NULL.
        let result: Option<bool> = match (&self.operand, self.op) {
            (Operand::Is(is), _) => Some(match (is, value) {
                (IsValue::Null, v) => v.is_none(),
                (IsValue::True, v) => v == Some("t"),
                (IsValue::False, v) => v == Some("f"),
            }),
            (Operand::Value(rhs), Op::IsDistinct) => Some(!self.equal_opt(value, rhs.as_deref())),
            (_, _) if value.is_none() => None,
            (Operand::Value(None), _) => None,
            (Operand::Value(Some(rhs)), op) => {
                let lhs = value.unwrap_or_default();
                let ord = compare(self.family, lhs, rhs);
                Some(match op {
                    Op::Eq => ord == Ordering::Equal,
                    Op::Neq => ord != Ordering::Equal,
                    Op::Lt => ord == Ordering::Less,
                    Op::Lte => ord != Ordering::Greater,
                    Op::Gt => ord == Ordering::Greater,
                    Op::Gte => ord != Ordering::Less,
                    _ => false,
                })
            }
            (Operand::List(items), _) => {
                let lhs = value.unwrap_or_default();
                if items
                    .iter()
                    .flatten()
                    .any(|i| compare(self.family, lhs, i) == Ordering::Equal)
                {
                    Some(true)
                } else if items.iter().any(Option::is_none) {
                    // `x = any('{a,NULL}')` is NULL, not false, when nothing matched.
                    None
                } else {
                    Some(false)
                }
            }
            (Operand::Pattern(p), op) => {
                let lhs = value.unwrap_or_default();
                Some(if op == Op::Ilike {
                    like(&lhs.to_lowercase(), p)
                } else {
                    like(lhs, p)
                })
            }
            (Operand::Regex(re), _) => Some(re.is_match(value.unwrap_or_default())),
        };
        match result {
            Some(r) => r != self.negate,
            None => false,
        }
    }

    fn equal_opt(&self, a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => compare(self.family, a, b) == Ordering::Equal,
            _ => false,
        }
    }
}

/// Compares two canonical texts of one family.
pub fn compare(family: Family, a: &str, b: &str) -> Ordering {
    match family {
        Family::Integer => match (a.parse::<i128>(), b.parse::<i128>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
        Family::Decimal => compare_decimal(a, b).unwrap_or_else(|| a.cmp(b)),
        Family::Bool | Family::Text => a.as_bytes().cmp(b.as_bytes()),
    }
}

/// Exact comparison of decimal texts (`-12.340`, `1e-5` for floats), so `1.5 = 1.50`.
/// `None` for forms it does not read (NaN, Infinity): those compare as text.
fn compare_decimal(a: &str, b: &str) -> Option<Ordering> {
    if a.contains(['e', 'E']) || b.contains(['e', 'E']) {
        let (x, y) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        return x.partial_cmp(&y);
    }
    let (na, ia, fa) = split_decimal(a)?;
    let (nb, ib, fb) = split_decimal(b)?;
    let zero_a = ia.is_empty() && fa.is_empty();
    let zero_b = ib.is_empty() && fb.is_empty();
    let magnitude = ia.len().cmp(&ib.len()).then_with(|| ia.cmp(ib)).then_with(|| {
        let width = fa.len().max(fb.len());
        let pad = |f: &str| format!("{f:0<width$}");
        pad(fa).cmp(&pad(fb))
    });
    Some(match (na && !zero_a, nb && !zero_b) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    })
}

/// `-012.3400` → (negative, "12", "34"): integer digits without leading zeros, fraction
/// without trailing zeros.
fn split_decimal(s: &str) -> Option<(bool, &str, &str)> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((neg, int.trim_start_matches('0'), frac.trim_end_matches('0')))
}

/// SQL `LIKE`: `%` any run, `_` one character, `\` escapes the next character.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative matcher with backtracking to the last `%` (linear in practice).
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('%') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('_') => {
                ti += 1;
                pi += 1;
                continue;
            }
            Some('\\') if p.get(pi + 1) == Some(&t[ti]) => {
                ti += 1;
                pi += 2;
                continue;
            }
            Some(c) if *c != '\\' && *c == t[ti] => {
                ti += 1;
                pi += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(family: Family, op: Op, operand: Operand, negate: bool) -> Compiled {
        Compiled {
            column: 0,
            family,
            op,
            operand,
            negate,
        }
    }

    fn v(s: &str) -> Operand {
        Operand::Value(Some(s.into()))
    }

    #[test]
    fn comparisons_by_family() {
        let c = |op, rhs: &str| cond(Family::Integer, op, v(rhs), false);
        assert!(c(Op::Eq, "46").matches(Cell::Text("46")));
        assert!(!c(Op::Eq, "46").matches(Cell::Text("460")));
        assert!(c(Op::Lt, "10").matches(Cell::Text("9")));
        assert!(c(Op::Gte, "-3").matches(Cell::Text("-3")));
        assert!(c(Op::Neq, "1").matches(Cell::Text("2")));
        let d = |op, rhs: &str| cond(Family::Decimal, op, v(rhs), false);
        assert!(d(Op::Eq, "1.50").matches(Cell::Text("1.5")));
        assert!(d(Op::Gt, "-0.5").matches(Cell::Text("0")));
        assert!(d(Op::Lt, "10.01").matches(Cell::Text("10.001")));
        assert!(d(Op::Lt, "-1").matches(Cell::Text("-2.5")));
        assert!(d(Op::Gt, "1e2").matches(Cell::Text("100.5")));
        let t = |op, rhs: &str| cond(Family::Text, op, v(rhs), false);
        assert!(t(Op::Lt, "b").matches(Cell::Text("a")));
        assert!(t(Op::Gt, "2025-01-01 00:00:00+00").matches(Cell::Text("2025-01-01 00:00:00.5+00")));
    }

    #[test]
    fn nulls_missing_and_negation() {
        let eq = cond(Family::Integer, Op::Eq, v("1"), false);
        assert!(!eq.matches(Cell::Null));
        assert!(!eq.matches(Cell::Missing));
        let neq = cond(Family::Integer, Op::Eq, v("1"), true);
        assert!(neq.matches(Cell::Text("2")));
        assert!(!neq.matches(Cell::Null), "NOT (NULL = 1) is NULL: not visible");
        let is_null = cond(Family::Text, Op::Is, Operand::Is(IsValue::Null), false);
        assert!(is_null.matches(Cell::Null));
        assert!(!is_null.matches(Cell::Text("x")));
        let not_null = cond(Family::Text, Op::Is, Operand::Is(IsValue::Null), true);
        assert!(not_null.matches(Cell::Text("x")));
        let is_true = cond(Family::Bool, Op::Is, Operand::Is(IsValue::True), false);
        assert!(is_true.matches(Cell::Text("t")) && !is_true.matches(Cell::Text("f")) && !is_true.matches(Cell::Null));
        let distinct = cond(Family::Text, Op::IsDistinct, v("a"), false);
        assert!(
            distinct.matches(Cell::Null) && distinct.matches(Cell::Text("b")) && !distinct.matches(Cell::Text("a"))
        );
    }

    #[test]
    fn in_lists() {
        let l = cond(
            Family::Text,
            Op::In,
            Operand::List(vec![Some("a".into()), Some("b c".into())]),
            false,
        );
        assert!(l.matches(Cell::Text("b c")));
        assert!(!l.matches(Cell::Text("c")));
        let not_in = cond(Family::Text, Op::In, Operand::List(vec![Some("a".into())]), true);
        assert!(not_in.matches(Cell::Text("b")) && !not_in.matches(Cell::Text("a")));
        let with_null = cond(Family::Text, Op::In, Operand::List(vec![Some("a".into()), None]), true);
        assert!(
            !with_null.matches(Cell::Text("b")),
            "NOT (b = any('{{a,NULL}}')) is NULL"
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello world", "hello%"));
        assert!(like("hello world", "%o w%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_"));
        assert!(like("50%", "50\\%"));
        assert!(!like("500", "50\\%"));
        assert!(like("", "%"));
        assert!(like("aaa", "%a%a%a%"));
        let ilike = cond(Family::Text, Op::Ilike, Operand::Pattern("hel%".into()), false);
        assert!(ilike.matches(Cell::Text("HELLO")));
        let re = cond(
            Family::Text,
            Op::Match,
            Operand::Regex(Regex::new("^a+b$").unwrap()),
            false,
        );
        assert!(re.matches(Cell::Text("aab")) && !re.matches(Cell::Text("ab c")));
    }
}
