//! Row Level Security, checked the way Supabase does (a SELECT by primary key as the
//! subscriber's role with its JWT claims set), but batched: one statement per
//! (role, claims) group per table for all rows of a chunk, pipelined with its transaction
//! control on one pooled connection.

use tokio_postgres::types::ToSql;
use tracing::warn;

use super::catalog::{quote_ident, TableInfo};
use super::pool::Pool;

/// Who is asking.
pub struct Viewer<'a> {
    /// Database role (the JWT `role` claim).
    pub role: &'a str,
    /// `request.jwt.claims`.
    pub claims: &'a str,
    /// `request.jwt.claim.sub`.
    pub sub: Option<&'a str>,
}

/// For each row (its primary-key values as text, in `table.pk` order), whether `viewer`
/// may SELECT it now. A policy that raises fails this call only (the caller logs it and
/// skips these rows for this viewer).
pub async fn visible(
    pool: &Pool,
    table: &TableInfo,
    viewer: &Viewer<'_>,
    rows: &[Vec<String>],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let pk: Vec<_> = table.pk.iter().map(|&i| &table.columns[i]).collect();
    // select k.i from unnest($2::int4[], $3::text[], …) k(i, c0, …)
    //  where exists (select 1 from t where t.pk0 = k.c0::type0 and …)
    let mut unnest = vec!["$1::int4[]".to_owned()];
    let mut names = vec!["i".to_owned()];
    let mut conds = Vec::new();
    for (n, col) in pk.iter().enumerate() {
        unnest.push(format!("${}::text[]", n + 2));
        names.push(format!("c{n}"));
        conds.push(format!("t.{} = k.c{n}::{}", quote_ident(&col.name), col.sql_type));
    }
    let sql = format!(
        "select k.i from unnest({}) k({}) where exists (select 1 from {}.{} t where {})",
        unnest.join(", "),
        names.join(", "),
        quote_ident(&table.schema),
        quote_ident(&table.name),
        conds.join(" and ")
    );
    let index: Vec<i32> = (0..rows.len() as i32).collect();
    let columns: Vec<Vec<&str>> = (0..pk.len())
        .map(|c| rows.iter().map(|r| r.get(c).map_or("", String::as_str)).collect())
        .collect();
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&index];
    for c in &columns {
        args.push(c);
    }

    let conn = pool.checkout().await?;
    let sub = viewer.sub.unwrap_or("");
    let settings_args: [&(dyn ToSql + Sync); 3] = [&viewer.role, &viewer.claims, &sub];
    // Prepared first, so that the four steps below go out in this order in one write:
    // the role and claims are transaction-local and the transaction is always rolled
    // back, so nothing leaks to the next user of `conn`.
    let settings = conn
        .prepare(
            "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
             set_config('request.jwt.claim.sub', $3, true), set_config('request.jwt.claim.role', $1, true)",
        )
        .await?;
    let check = conn.prepare(&sql).await?;
    let (begin, settings, result, rollback) = tokio::join!(
        conn.batch_execute("begin"),
        conn.query(&settings, &settings_args),
        conn.query(&check, &args),
        conn.batch_execute("rollback"),
    );
    begin?;
    if let Err(e) = rollback {
        warn!(error = %e, "rollback after an RLS check failed");
        return Err(e);
    }
    settings?;
    let mut seen = vec![false; rows.len()];
    for row in result? {
        let i: i32 = row.get(0);
        if let Some(s) = usize::try_from(i).ok().and_then(|i| seen.get_mut(i)) {
            *s = true;
        }
    }
    Ok(seen)
}
