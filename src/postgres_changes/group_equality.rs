//! Which viewer groups can possibly see a round's rows, known before asking Postgres.
//!
//! The commonest policy, `user_id = auth.uid()`, shows a row only to the groups whose
//! value equals the row's column. When every row the policies pass must satisfy such an
//! equality, the shared statement needs only the groups whose value is among the round's
//! rows' values: for 1,000 viewers and a few rows, a few groups instead of 1,000 (the
//! statement spent most of its time unnesting and casting the group list).
//!
//! Sound by construction, never a guess: the equality is required only when it is a
//! top-level conjunct of a single permissive policy or of a restrictive one, and values
//! are compared as text only for types whose text form is canonical (two values are
//! equal exactly when Postgres prints them alike). Leaving a group out can only hide a
//! row from it, never show one.

use super::catalog::TableInfo;
use super::policy::GroupValue;
use super::sql_tokens::{tokenize, Token};

/// Types whose output text is canonical: equal values print alike and unequal ones do
/// not (unlike `numeric`, floats, collated text or time zones).
const CANONICAL_TYPES: &[&str] = &["uuid", "integer", "bigint", "smallint"];

/// `columns[column] = __rs_g.__rs_v<value>` holds for every row a group sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupEquality {
    /// Index into the table's columns.
    pub column: usize,
    /// Index into the plan's group values.
    pub value: usize,
}

/// The equality that `required` quals (each must hold for a visible row) impose, if one
/// of them is exactly `column = group value` at its top level, on a canonical type.
pub fn required_equality(required: &[&str], table: &TableInfo, values: &[GroupValue]) -> Option<GroupEquality> {
    required.iter().find_map(|qual| {
        let tokens = tokenize(qual).ok()?;
        conjuncts(&tokens)?.into_iter().find_map(|c| equality(c, table, values))
    })
}

/// The top-level `and` operands of `tokens`; `None` if the top level has anything whose
/// precedence could bind an `and` differently (`or`, `between`, `case`).
fn conjuncts<'a, 't>(tokens: &'t [Token<'a>]) -> Option<Vec<&'t [Token<'a>]>> {
    let tokens = unwrap_parens(tokens);
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')' | ']') => depth -= 1,
            t if depth == 0 && (t.is_word("or") || t.is_word("between") || t.is_word("case")) => return None,
            t if depth == 0 && t.is_word("and") => {
                out.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&tokens[start..]);
    Some(out)
}

/// `tokens` without parentheses that enclose all of it.
fn unwrap_parens<'a, 't>(mut tokens: &'t [Token<'a>]) -> &'t [Token<'a>] {
    while tokens.len() >= 2 && tokens[0] == Token::Punct('(') && closing(tokens) == Some(tokens.len() - 1) {
        tokens = &tokens[1..tokens.len() - 1];
    }
    tokens
}

/// The index of the parenthesis closing `tokens[0]`.
fn closing(tokens: &[Token<'_>]) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `column = __rs_g.__rs_vN` or `__rs_g.__rs_vN = column`, exactly.
fn equality(conjunct: &[Token<'_>], table: &TableInfo, values: &[GroupValue]) -> Option<GroupEquality> {
    let c = unwrap_parens(conjunct);
    let (column, value) = match c {
        [col, Token::Op("="), g, Token::Punct('.'), v] => (col, (g, v)),
        [g, Token::Punct('.'), v, Token::Op("="), col] => (col, (g, v)),
        _ => return None,
    };
    if !value.0.is_word("__rs_g") {
        return None;
    }
    let Token::Word(v) = value.1 else { return None };
    let value: usize = v.strip_prefix("__rs_v")?.parse().ok()?;
    let name = match column {
        // Unquoted identifiers are folded to lower case; Postgres prints them so.
        Token::Word(w) => w.to_ascii_lowercase(),
        Token::Quoted(q) => q.get(1..q.len().checked_sub(1)?)?.replace("\"\"", "\""),
        _ => return None,
    };
    let column = table.column(&name)?;
    let GroupValue::Function { returns, .. } = values.get(value)? else {
        return None;
    };
    let sql_type = &table.columns[column].sql_type;
    (CANONICAL_TYPES.contains(&returns.as_str()) && sql_type == returns).then_some(GroupEquality { column, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_changes::catalog::ColumnInfo;

    fn table() -> TableInfo {
        let col = |n: &str, t: &str| ColumnInfo {
            name: n.into(),
            type_name: t.into(),
            type_oid: 0,
            sql_type: t.into(),
        };
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "todos".into(),
            columns: vec![
                col("id", "bigint"),
                col("user_id", "uuid"),
                col("Owner", "uuid"),
                col("score", "numeric"),
                col("team", "integer"),
            ],
            pk: vec![0],
        }
    }

    fn uid() -> GroupValue {
        GroupValue::Function {
            call: "auth.uid".into(),
            returns: "uuid".into(),
        }
    }

    fn find(quals: &[&str], values: &[GroupValue]) -> Option<GroupEquality> {
        required_equality(quals, &table(), values)
    }

    #[test]
    fn an_owner_conjunct_is_required_in_either_order_and_any_parentheses() {
        let at = |column, value| Some(GroupEquality { column, value });
        let v = [GroupValue::Claims, uid()];
        assert_eq!(find(&["((( user_id = __rs_g.__rs_v1 )))"], &v), at(1, 1));
        assert_eq!(find(&["( __rs_g.__rs_v1 = user_id )"], &v), at(1, 1));
        assert_eq!(find(&["(( x > 1 ) and ( \"Owner\" = __rs_g.__rs_v1 ))"], &v), at(2, 1));
        assert_eq!(find(&["( a or b )", "( user_id = __rs_g.__rs_v1 )"], &v), at(1, 1));
    }

    #[test]
    fn nothing_is_required_where_the_equality_might_not_hold() {
        let v = [uid(), GroupValue::Sub];
        for qual in [
            // Another branch may show the row.
            "(( user_id = __rs_g.__rs_v0 ) or ( x = 1 ))",
            "( user_id = __rs_g.__rs_v0 or x = 1 )",
            "( user_id = __rs_g.__rs_v0 ) or ( x = 1 )",
            // Negated, cast or compared otherwise.
            "( not ( user_id = __rs_g.__rs_v0 ) )",
            "( user_id = __rs_g.__rs_v0 :: uuid )",
            "( user_id <> __rs_g.__rs_v0 )",
            "( x between 1 and user_id = __rs_g.__rs_v0 )",
            // Text (collations) and numeric (1.0 = 1.00) are not compared as text.
            "( user_id :: text = __rs_g.__rs_v1 )",
            "( team = __rs_g.__rs_v1 )",
            // Not a column of the table, or a qualified name.
            "( nobody = __rs_g.__rs_v0 )",
            "( todos.user_id = __rs_g.__rs_v0 )",
            "( owner = __rs_g.__rs_v0 )",
            "( user_id = __rs_g.__rs_v7 )",
        ] {
            assert_eq!(find(&[qual], &v), None, "{qual}");
        }
        let numeric = GroupValue::Function {
            call: "auth.level".into(),
            returns: "numeric".into(),
        };
        assert_eq!(find(&["( score = __rs_g.__rs_v0 )"], &[numeric]), None);
        let int = GroupValue::Function {
            call: "auth.team".into(),
            returns: "integer".into(),
        };
        assert_eq!(
            find(&["( team = __rs_g.__rs_v0 )"], &[int]),
            Some(GroupEquality { column: 4, value: 0 })
        );
    }
}
