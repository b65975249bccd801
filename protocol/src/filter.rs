//! `postgres_changes` binding parameters and the filter grammar, parsed exactly as
//! Supabase parses them (protocol.md §7.1–7.2), with the same error texts. Evaluating a
//! filter against a row belongs to the server, not here.
//!
//! ```text
//! filter     := condition ("," condition)*      -- AND; commas inside (...) or "..." do not split
//! condition  := column "=" ["not."] op "." value
//! op         := eq | neq | lt | lte | gt | gte | in | like | ilike | is | match | imatch | isdistinct
//! ```

use std::fmt;

use serde_json::{Map, Value};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`
    Eq,
    /// `<>`
    Neq,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `= any(array)`
    In,
    /// `LIKE`
    Like,
    /// `ILIKE`
    Ilike,
    /// `IS NULL|TRUE|FALSE|UNKNOWN`
    Is,
    /// `~` (POSIX regex)
    Match,
    /// `~*`
    Imatch,
    /// `IS DISTINCT FROM`
    IsDistinct,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            "isdistinct" => Op::IsDistinct,
            _ => return None,
        })
    }

    /// The operator's name in the filter grammar.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }
}

/// One condition: `column <op> value`, optionally negated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    /// Column name.
    pub column: String,
    /// Operator.
    pub op: Op,
    /// The value, unquoted; for `in` a Postgres array literal `{a,b}`.
    pub value: String,
    /// `not.` prefix.
    pub negate: bool,
}

/// Which changes a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `*`
    All,
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
}

impl Action {
    /// The name Supabase prints in its error messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::All => "*",
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }
}

/// A parsed `postgres_changes` binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Event filter.
    pub action: Action,
    /// Schema name, `*` for any.
    pub schema: String,
    /// Table name, `*` for any.
    pub table: String,
    /// Conditions, ANDed.
    pub filters: Vec<Condition>,
    /// `select` columns (`Some(vec![])` = primary key only); `None` = all columns.
    pub select: Option<Vec<String>>,
}

impl Binding {
    /// Parses a binding as sent in the join config.
    pub fn parse(params: &Map<String, Value>) -> Result<Binding, String> {
        let action = match params.get("event") {
            Some(Value::String(e)) if e == "*" => Action::All,
            Some(Value::String(e)) => match e.to_ascii_uppercase().as_str() {
                "INSERT" => Action::Insert,
                "UPDATE" => Action::Update,
                "DELETE" => Action::Delete,
                _ => Action::All,
            },
            _ => Action::All,
        };
        let select = match params.get("select") {
            Some(Value::Array(cols)) => {
                Some(cols.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect::<Vec<_>>())
            }
            Some(Value::String(_)) => {
                return Err("Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]".into())
            }
            _ => None,
        };
        let string = |k: &str| match params.get(k) {
            Some(Value::String(s)) => Some(Some(s.as_str())),
            Some(_) => Some(None),
            None => None,
        };
        let (schema, table, filters) = match (string("schema"), string("table"), string("filter")) {
            (Some(Some(schema)), Some(Some(table)), Some(Some(filter))) => {
                let filters = parse_filters(filter).map_err(|e| format!("Error parsing `filter` params: {e}"))?;
                (schema, table, filters)
            }
            (Some(Some(schema)), Some(Some(table)), None) => (schema, table, Vec::new()),
            (Some(Some(schema)), None, None) => (schema, "*", Vec::new()),
            (None, Some(Some(table)), None) => ("public", table, Vec::new()),
            _ => {
                return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {}",
                inspect_map(params)
            ))
            }
        };
        if select.is_some() && (schema == "*" || table == "*") {
            return Err("Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.".into());
        }
        Ok(Binding {
            action,
            schema: schema.to_owned(),
            table: table.to_owned(),
            filters,
            select,
        })
    }

    /// The parameters as Supabase prints them in subscribe errors:
    /// `[event: *, schema: public, table: t, filters: [{"id", "eq", "1", false}], select: nil]`.
    pub fn inspect(&self) -> String {
        let filters: Vec<String> = self
            .filters
            .iter()
            .map(|c| {
                format!(
                    "{{{}, {}, {}, {}}}",
                    inspect_str(&c.column),
                    inspect_str(c.op.name()),
                    inspect_str(&c.value),
                    c.negate
                )
            })
            .collect();
        let select = match &self.select {
            None => "nil".to_owned(),
            Some(cols) => format!(
                "[{}]",
                cols.iter().map(|c| inspect_str(c)).collect::<Vec<_>>().join(", ")
            ),
        };
        format!(
            "[event: {}, schema: {}, table: {}, filters: [{}], select: {}]",
            self.action.name(),
            self.schema,
            self.table,
            filters.join(", "),
            select
        )
    }
}

/// Parses a filter string into ANDed conditions (empty/whitespace → none).
pub fn parse_filters(filter: &str) -> Result<Vec<Condition>, String> {
    let trimmed = filter.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(trimmed).iter().map(|s| parse_segment(s)).collect()
}

/// Splits on commas that are outside parentheses and outside double quotes. A quote
/// only opens a quoted value right after `.`, `(` or `,`, as in PostgREST's grammar.
fn split_top_level(filter: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut depth, mut quoted, mut prev) = (0usize, false, '\0');
    let mut chars = filter.chars();
    while let Some(c) = chars.next() {
        if quoted {
            current.push(c);
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        current.push(next);
                        prev = next;
                        continue;
                    }
                }
                '"' => quoted = false,
                _ => {}
            }
            prev = c;
            continue;
        }
        match c {
            '"' if matches!(prev, '.' | '(' | ',') => quoted = true,
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                prev = '\0';
                continue;
            }
            _ => {}
        }
        current.push(c);
        prev = c;
    }
    parts.push(current);
    parts
}

fn parse_segment(segment: &str) -> Result<Condition, String> {
    let trimmed = segment.trim();
    if trimmed.is_empty() {
        return Err("filter must not contain empty segments (check for extra commas)".into());
    }
    let Some((column, rest)) = trimmed.split_once('=') else {
        return Err(inspect_list(&[trimmed]));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let Some((op, value)) = op_value.split_once('.') else {
        return Err(inspect_list(&[op_value]));
    };
    let Some(op) = Op::parse(op) else {
        return Err(inspect_list(&[op, value]));
    };
    let value = if op == Op::In {
        match value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            Some(inner) => format!("{{{inner}}}"),
            None => return Err("`in` filter value must be wrapped by parentheses".into()),
        }
    } else {
        unquote(value)
    };
    Ok(Condition {
        column: column.to_owned(),
        op,
        value,
        negate,
    })
}

/// `"a \"b\""` → `a "b"`; anything that is not one well-formed quoted string stays as is.
fn unquote(value: &str) -> String {
    let Some(rest) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => out.push(n),
                None => return value.to_owned(),
            },
            '"' => return if chars.next().is_none() { out } else { value.to_owned() },
            c => out.push(c),
        }
    }
    value.to_owned()
}

/// Elixir's `inspect` of a list of strings: `["a", "b"]`.
fn inspect_list(items: &[&str]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| inspect_str(s)).collect::<Vec<_>>().join(", ")
    )
}

/// Elixir's `inspect` of a string: double-quoted with `"` and `\` escaped.
fn inspect_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Elixir's `inspect` of a map of JSON params, for the "no params" error.
fn inspect_map(params: &Map<String, Value>) -> String {
    if params.is_empty() {
        return "%{}".into();
    }
    let items: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => inspect_str(s),
                Value::Null => "nil".into(),
                other => other.to_string(),
            };
            format!("{} => {v}", inspect_str(k))
        })
        .collect();
    format!("%{{{}}}", items.join(", "))
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = if self.negate { "not." } else { "" };
        write!(f, "{}={not}{}.{}", self.column, self.op.name(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(v: Value) -> Result<Binding, String> {
        Binding::parse(v.as_object().unwrap())
    }

    fn cond(column: &str, op: Op, value: &str, negate: bool) -> Condition {
        Condition {
            column: column.into(),
            op,
            value: value.into(),
            negate,
        }
    }

    #[test]
    fn supabase_doc_examples() {
        assert_eq!(
            parse_filters("subject=eq.hey").unwrap(),
            vec![cond("subject", Op::Eq, "hey", false)]
        );
        assert_eq!(
            parse_filters("subject=in.(hidee,ho)").unwrap(),
            vec![cond("subject", Op::In, "{hidee,ho}", false)]
        );
        assert_eq!(parse_filters("").unwrap(), vec![]);
        assert_eq!(parse_filters("   ").unwrap(), vec![]);
        assert_eq!(parse_filters("subject=foo.hey").unwrap_err(), r#"["foo", "hey"]"#);
        assert_eq!(parse_filters("undefined").unwrap_err(), r#"["undefined"]"#);
        assert_eq!(parse_filters("wrong").unwrap_err(), r#"["wrong"]"#);
        assert_eq!(
            parse_filters("id=gt.0,id=lt.100").unwrap(),
            vec![cond("id", Op::Gt, "0", false), cond("id", Op::Lt, "100", false)]
        );
        assert_eq!(
            parse_filters("id=in.(1,2,3),details=eq.active").unwrap(),
            vec![
                cond("id", Op::In, "{1,2,3}", false),
                cond("details", Op::Eq, "active", false)
            ]
        );
    }

    #[test]
    fn negation_quotes_and_errors() {
        assert_eq!(
            parse_filters("status=not.in.(a)").unwrap(),
            vec![cond("status", Op::In, "{a}", true)]
        );
        assert_eq!(
            parse_filters(r#"name=eq."a,b""#).unwrap(),
            vec![cond("name", Op::Eq, "a,b", false)]
        );
        assert_eq!(
            parse_filters(r#"name=eq."say \"hi\"""#).unwrap(),
            vec![cond("name", Op::Eq, "say \"hi\"", false)]
        );
        assert_eq!(parse_filters(r#"name=in.("a,b",c),x=is.null"#).unwrap().len(), 2);
        assert_eq!(
            parse_filters("id=in.1,2").unwrap_err(),
            "`in` filter value must be wrapped by parentheses"
        );
        assert_eq!(
            parse_filters("id=eq.1,,id=eq.2").unwrap_err(),
            "filter must not contain empty segments (check for extra commas)"
        );
        assert_eq!(parse_filters("id=eq").unwrap_err(), r#"["eq"]"#);
        assert_eq!(
            parse_filters("a=eq.x.y").unwrap(),
            vec![cond("a", Op::Eq, "x.y", false)]
        );
    }

    #[test]
    fn bindings_like_supabase() {
        let b =
            binding(json!({"event": "insert", "schema": "public", "table": "todos", "filter": "id=eq.46"})).unwrap();
        assert_eq!(
            (b.action, b.schema.as_str(), b.table.as_str()),
            (Action::Insert, "public", "todos")
        );
        let b = binding(json!({"event": "*", "schema": "public"})).unwrap();
        assert_eq!(b.table, "*");
        let b = binding(json!({"event": "whatever", "table": "t"})).unwrap();
        assert_eq!((b.action, b.schema.as_str()), (Action::All, "public"));
        assert_eq!(
            binding(json!({"event": "*", "schema": "public", "table": "test", "filter": "wrong"})).unwrap_err(),
            "Error parsing `filter` params: [\"wrong\"]"
        );
        assert_eq!(
            binding(json!({})).unwrap_err(),
            "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: %{}"
        );
        assert!(binding(json!({"schema": "*", "table": "t", "select": ["id"]})).is_err());
        assert!(binding(json!({"schema": "s", "table": "t", "select": "id"})).is_err());
        assert_eq!(
            binding(json!({"schema": "s", "table": "t", "select": []}))
                .unwrap()
                .select,
            Some(vec![])
        );
    }

    #[test]
    fn inspect_matches_supabase_messages() {
        let b = binding(json!({"event": "*", "schema": "public", "table": "doesnotexist"})).unwrap();
        assert_eq!(
            b.inspect(),
            "[event: *, schema: public, table: doesnotexist, filters: [], select: nil]"
        );
        let b =
            binding(json!({"event": "*", "schema": "public", "table": "test", "filter": "notacolumn=eq.123"})).unwrap();
        assert_eq!(
            b.inspect(),
            r#"[event: *, schema: public, table: test, filters: [{"notacolumn", "eq", "123", false}], select: nil]"#
        );
    }
}
