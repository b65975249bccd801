//! Turning a channel's `postgres_changes` bindings into subscriptions checked against the
//! catalog: the table is in the publication, filter and select columns exist and the
//! subscriber's role may read them, values cast to the column type, `in` lists hold at
//! most 100 values, patterns and regexes are valid. Error texts are Supabase's
//! (protocol.md §7.4).

use realtime_protocol::filter::{Action, Binding, Op};
use realtime_protocol::join::binding_id;
use regex::RegexBuilder;
use serde_json::{Map, Value};
use tracing::debug;

use super::catalog::{Catalog, TableInfo};
use super::diagnose;
use super::filter::{Compiled, Family, IsValue, Operand};

/// One binding resolved to one table.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The id the client got in the join reply.
    pub id: u32,
    /// Events wanted.
    pub action: Action,
    /// Table OID.
    pub table: u32,
    /// Conditions, ANDed.
    pub filters: Vec<Compiled>,
    /// `select`: column indexes (primary key columns are always added).
    pub select: Option<Vec<usize>>,
}

/// Why a subscription failed; becomes the `system` error message.
#[derive(Debug)]
pub enum SubscribeError {
    /// The client's parameters did not parse, or matched no published table.
    Rejected(String),
    /// The database could not be asked (down, timeouts): retried.
    Database(String),
}

/// Resolves every binding of a channel for `role`. The first failure fails them all, as a
/// Supabase subscription transaction does.
pub async fn resolve(
    catalog: &Catalog,
    publication: &str,
    bindings: &[Map<String, Value>],
    role: &str,
    max_in_values: usize,
) -> Result<Vec<Subscription>, SubscribeError> {
    let mut subs = Vec::new();
    for params in bindings {
        let binding = Binding::parse(params).map_err(SubscribeError::Rejected)?;
        let id = binding_id(params);
        let tables = catalog
            .published_tables(publication, &binding.schema, &binding.table)
            .await
            .map_err(|e| database_error(&binding, &e))?;
        if tables.is_empty() {
            let mut message = format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: {}",
                binding.inspect()
            );
            if let Some(hint) = diagnose::not_published(catalog, publication, &binding.schema, &binding.table).await {
                message.push_str(". ");
                message.push_str(&hint);
            }
            return Err(SubscribeError::Rejected(message));
        }
        for oid in tables {
            let Some(table) = catalog.table(oid).await.map_err(|e| database_error(&binding, &e))? else {
                continue;
            };
            let sub = compile(catalog, &binding, id, &table, role, max_in_values).await.map_err(|exception| {
                SubscribeError::Rejected(format!(
                    "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: {exception}",
                    binding.inspect()
                ))
            })?;
            subs.push(sub);
        }
    }
    debug!(count = subs.len(), role, "postgres_changes subscriptions resolved");
    Ok(subs)
}

fn database_error(binding: &Binding, e: &tokio_postgres::Error) -> SubscribeError {
    match e.as_db_error() {
        // A real answer from the database about these parameters.
        Some(_) => SubscribeError::Rejected(format!(
            "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: {}",
            binding.inspect(),
            exception_text(e)
        )),
        None => SubscribeError::Database(e.to_string()),
    }
}

/// `ERROR P0001 (raise_exception) invalid column for filter x`, Postgrex's rendering.
pub fn exception_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            format!("ERROR {code} ({}) {}", condition_name(code), db.message())
        }
        None => e.to_string(),
    }
}

fn raise(message: String) -> String {
    format!("ERROR P0001 (raise_exception) {message}")
}

async fn compile(
    catalog: &Catalog,
    binding: &Binding,
    id: u32,
    table: &TableInfo,
    role: &str,
    max_in_values: usize,
) -> Result<Subscription, String> {
    let access = catalog.access(role, table).await.map_err(|e| {
        let text = exception_text(&e);
        match e.code() {
            Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_OBJECT => {
                format!("{text}. {}", diagnose::missing_role(role))
            }
            _ => text,
        }
    })?;
    diagnose::check_select(role, table, &access);
    let readable = |name: &str| {
        table
            .column(name)
            .filter(|&i| access.selectable.get(i).copied().unwrap_or(false))
    };
    let mut filters = Vec::new();
    for cond in &binding.filters {
        let Some(column) = readable(&cond.column) else {
            return Err(raise(format!("invalid column for filter {}", cond.column)));
        };
        let col = &table.columns[column];
        let family = Family::of(&col.type_name);
        let operand = match cond.op {
            Op::In => {
                let items = catalog
                    .canonical(&cond.value, &col.sql_type, true)
                    .await
                    .map_err(|e| exception_text(&e))?;
                if items.len() > max_in_values {
                    return Err(raise(format!(
                        "too many values for `in` filter. Maximum {max_in_values}"
                    )));
                }
                Operand::List(items)
            }
            Op::Is => match (cond.value.to_ascii_lowercase().as_str(), family) {
                ("null", _) => Operand::Is(IsValue::Null),
                ("unknown", Family::Bool) => Operand::Is(IsValue::Null),
                ("true", Family::Bool) => Operand::Is(IsValue::True),
                ("false", Family::Bool) => Operand::Is(IsValue::False),
                _ => {
                    return Err(raise(format!(
                        "invalid value for `is` filter on column {}: {}",
                        cond.column, cond.value
                    )))
                }
            },
            Op::Like | Op::Ilike => {
                if family != Family::Text || !is_textual(&col.type_name) {
                    return Err(raise(format!(
                        "operator {} is not supported for column {}",
                        cond.op.name(),
                        cond.column
                    )));
                }
                Operand::Pattern(if cond.op == Op::Ilike {
                    cond.value.to_lowercase()
                } else {
                    cond.value.clone()
                })
            }
            Op::Match | Op::Imatch => {
                if !is_textual(&col.type_name) {
                    return Err(raise(format!(
                        "operator {} is not supported for column {}",
                        cond.op.name(),
                        cond.column
                    )));
                }
                catalog.check_regex(&cond.value).await.map_err(|e| exception_text(&e))?;
                let re = RegexBuilder::new(&cond.value)
                    .case_insensitive(cond.op == Op::Imatch)
                    .build()
                    .map_err(|e| raise(format!("invalid regular expression: {e}")))?;
                Operand::Regex(re)
            }
            _ => {
                let mut v = catalog
                    .canonical(&cond.value, &col.sql_type, false)
                    .await
                    .map_err(|e| exception_text(&e))?;
                Operand::Value(v.pop().flatten())
            }
        };
        filters.push(Compiled {
            column,
            family,
            op: cond.op,
            operand,
            negate: cond.negate,
        });
    }
    let select = match &binding.select {
        None => None,
        Some(names) => {
            let mut cols = Vec::with_capacity(names.len());
            for name in names {
                let Some(i) = readable(name) else {
                    return Err(raise(format!("invalid column for select {name}")));
                };
                cols.push(i);
            }
            Some(cols)
        }
    };
    Ok(Subscription {
        id,
        action: binding.action,
        table: table.oid,
        filters,
        select,
    })
}

fn is_textual(type_name: &str) -> bool {
    matches!(type_name, "text" | "varchar" | "bpchar" | "name" | "citext" | "char")
}

/// Postgres' condition names for the SQLSTATEs a subscription can hit.
fn condition_name(code: &str) -> &'static str {
    match code {
        "P0001" => "raise_exception",
        "22P02" => "invalid_text_representation",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22003" => "numeric_value_out_of_range",
        "2201B" => "invalid_regular_expression",
        "22023" => "invalid_parameter_value",
        "22021" => "character_not_in_repertoire",
        "42703" => "undefined_column",
        "42704" => "undefined_object",
        "42P01" => "undefined_table",
        "42501" => "insufficient_privilege",
        "42883" => "undefined_function",
        "57014" => "query_canceled",
        _ => "error",
    }
}
