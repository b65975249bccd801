//! Which of a round's rows the shared check can answer once for several.
//!
//! A policy reads a row only through the columns it names: `exists (select 1 from
//! members m where m.team = items.team and m.user_id = auth.uid())` answers the same for
//! every row of one team. So the shared statement checks one row per distinct value of
//! those columns and says which rows are like it: a round of 500 rows over 10 teams asks
//! 10 rows × 100 viewers instead of 500 × 100, and sends back that much less.
//!
//! Sound only if every way the policies read the row is seen, so anything unclear gives
//! no key: the row as a whole (`items` not followed by a column), a system column, a
//! column we do not know the type of (generated columns are not in the catalog we keep),
//! or a type whose text form could print two values alike. Postgres prints our own
//! columns bare, or qualified by the table's name inside a subquery; a name qualified by
//! anything else (`m.user_id`) is another relation's. Naming more columns than the
//! policies really read (a bare word that merely equals a column's name) only merges
//! fewer rows.

use std::collections::BTreeSet;

use super::catalog::TableInfo;
use super::sql_tokens::{tokenize, Token};

/// Types whose text form tells values apart (rows are compared by it).
const DISTINCT_TEXT_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "uuid",
    "text",
    "boolean",
    "numeric",
    "date",
    "timestamp with time zone",
    "timestamp without time zone",
    "jsonb",
    "character varying",
];

const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// The columns (indexes into `table.columns`) the `quals` read of their row, in order;
/// `None` when they may read it otherwise. `all_columns`: every column of the table,
/// generated ones included.
pub fn row_key(quals: &[&str], table: &TableInfo, all_columns: &[String]) -> Option<Vec<usize>> {
    let mut key = BTreeSet::new();
    for qual in quals {
        let tokens = tokenize(qual).ok()?;
        for (i, tok) in tokens.iter().enumerate() {
            let name = match tok {
                Token::Word(w) => (*w).to_owned(),
                Token::Quoted(q) => unquote(q),
                _ => continue,
            };
            if name == table.name {
                // `items.team` names a column (matched next); `items` alone, or
                // `items.*`, is the row.
                let column_follows = tokens.get(i + 1) == Some(&Token::Punct('.'))
                    && matches!(tokens.get(i + 2), Some(Token::Word(_) | Token::Quoted(_)));
                if column_follows {
                    continue;
                }
                return None;
            }
            // `m.user_id`: a column of another relation (Postgres prints our own
            // columns bare, or as `items.team` inside a subquery).
            let qualifier = match (i.checked_sub(2).map(|q| tokens[q]), i.checked_sub(1).map(|d| tokens[d])) {
                (Some(Token::Word(q)), Some(Token::Punct('.'))) => Some((*q).to_owned()),
                (Some(Token::Quoted(q)), Some(Token::Punct('.'))) => Some(unquote(q)),
                _ => None,
            };
            if qualifier.is_some_and(|q| q != table.name) {
                continue;
            }
            if SYSTEM_COLUMNS.contains(&name.as_str()) {
                return None;
            }
            if !all_columns.contains(&name) {
                continue;
            }
            let column = table.column(&name)?;
            let sql_type = &table.columns[column].sql_type;
            let base = sql_type.split('(').next().unwrap_or(sql_type).trim_end();
            if !DISTINCT_TEXT_TYPES.contains(&base) {
                return None;
            }
            key.insert(column);
        }
    }
    Some(key.into_iter().collect())
}

/// `"Team"` → `Team` (doubled quotes inside stand for one).
fn unquote(quoted: &str) -> String {
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(quoted)
        .replace("\"\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_changes::catalog::ColumnInfo;

    fn table() -> TableInfo {
        let col = |name: &str, sql_type: &str| ColumnInfo {
            name: name.into(),
            type_name: String::new(),
            type_oid: 0,
            sql_type: sql_type.into(),
        };
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![
                col("id", "bigint"),
                col("user_id", "uuid"),
                col("team", "integer"),
                col("Grp", "text"),
                col("score", "double precision"),
                col("note", "character varying(20)"),
            ],
            pk: vec![0],
        }
    }

    fn all() -> Vec<String> {
        let mut all: Vec<String> = table().columns.iter().map(|c| c.name.clone()).collect();
        all.push("total".into());
        all
    }

    fn key(quals: &[&str]) -> Option<Vec<usize>> {
        row_key(quals, &table(), &all())
    }

    #[test]
    fn the_columns_a_policy_names_are_its_key() {
        assert_eq!(key(&["(user_id = auth.uid())"]), Some(vec![1]));
        assert_eq!(
            key(&[
                "(EXISTS ( SELECT 1 FROM public.members m WHERE ((m.team = items.team) AND (m.user_id = auth.uid()))))"
            ]),
            Some(vec![2]),
            "`m.user_id` is the member's"
        );
        assert_eq!(
            key(&["(EXISTS ( SELECT 1 FROM public.members m WHERE ((m.team = team) AND (m.user_id = auth.uid()))))"]),
            Some(vec![2]),
            "a bare name is taken as ours: one column more, never one less"
        );
        assert_eq!(key(&["(\"Grp\" = 'a'::text)", "(note = 'x'::text)"]), Some(vec![3, 5]));
        assert_eq!(key(&["true"]), Some(vec![]), "every row alike");
    }

    #[test]
    fn a_policy_reading_the_row_otherwise_has_no_key() {
        assert_eq!(key(&["(to_jsonb(items.*) ? 'x'::text)"]), None);
        assert_eq!(key(&["(row_to_json(items) IS NOT NULL)"]), None);
        assert_eq!(key(&["(xmin IS NOT NULL)"]), None);
        assert_eq!(key(&["(items.xmin IS NOT NULL)"]), None);
        assert_eq!(
            key(&["(score > (0)::double precision)"]),
            None,
            "floats are not compared by text"
        );
        assert_eq!(key(&["(total > 0)"]), None, "a generated column we do not keep");
    }
}
