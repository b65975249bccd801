//! Row Level Security, checked the way Supabase does (a SELECT by primary key as the
//! subscriber's role with its JWT claims set), but batched:
//!
//! * one probe per (role, claims) viewer per table covers all rows of a chunk;
//! * viewers are spread over the pool's connections, and on each connection all of its
//!   viewers are checked by ONE statement: a `pg_temp` PL/pgSQL function (created once
//!   per connection and table) that loops over the viewers, setting each one's role and
//!   claims (transaction-local) before its probe. Its probe's plan is cached inside the
//!   function, so a viewer costs a few settings and index probes, not statements, round
//!   trips and planning;
//! * if anything in such a batch fails (a policy that raises aborts the statement), the
//!   batch is run again one viewer per transaction, so only the failing viewer loses its
//!   rows (Supabase issue #2093 lost everyone's).

use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};
use tracing::warn;

use super::catalog::{quote_ident, TableInfo};
use super::pool::Pool;
use crate::observability::metrics::{Rls, RlsTimer};

/// Who is asking.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    /// Database role (the JWT `role` claim).
    pub role: &'a str,
    /// `request.jwt.claims`.
    pub claims: &'a str,
    /// `request.jwt.claim.sub`.
    pub sub: Option<&'a str>,
}

/// One viewer and the rows (primary-key values as text, in `table.pk` order) to check.
pub struct Check<'a> {
    /// Who.
    pub viewer: Viewer<'a>,
    /// Which rows.
    pub rows: Vec<Vec<String>>,
}

/// Most viewers checked by one statement.
const BATCH: usize = 1024;

/// Opens the check transaction. The check's arguments are arrays, whose length a custom
/// plan knows: Postgres then judges the generic plan (10 elements assumed) costlier and
/// plans every execution again (the profile: planning was most of the database's work).
/// The generic plan is the same nested loop of key probes, so it is forced.
///
/// Sequential scans are off: a plan is made once per connection and kept, and one made
/// while the table was empty (a new app's table, freshly analyzed) scans it, which it
/// then goes on doing per row as the table grows. A key probe is right at any size.
const BEGIN: &str = "begin; set local plan_cache_mode = force_generic_plan; set local enable_seqscan = off";

const SETTINGS: &str = "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
     set_config('request.jwt.claim.sub', $3, true), set_config('request.jwt.claim.role', $1, true)";

/// For each check, per row: may the viewer SELECT it now. An error is that viewer's only.
///
/// With `batch` false (`POSTGRES_CHANGES_RLS_BATCH=false`), every (viewer, row) pair gets
/// its own settings + check statements, as Supabase's `apply_rls` does per subscription
/// and change; still pipelined over the pool, so the difference measured is what the
/// batching (one probe per viewer, one statement per connection) buys.
pub async fn visible(
    pool: &Pool,
    table: &TableInfo,
    checks: &[Check<'_>],
    batch: bool,
) -> Vec<Result<Vec<bool>, Error>> {
    let _timer = RlsTimer::start(Rls::PostgresChanges, checks.len());
    if batch {
        return visible_batched(pool, table, checks, true).await;
    }
    let single: Vec<Check<'_>> = checks
        .iter()
        .flat_map(|c| {
            c.rows.iter().map(|r| Check {
                viewer: c.viewer,
                rows: vec![r.clone()],
            })
        })
        .collect();
    let mut answers = visible_batched(pool, table, &single, false).await.into_iter();
    checks
        .iter()
        .map(|c| {
            let mut seen = Vec::with_capacity(c.rows.len());
            let mut error = None;
            for _ in 0..c.rows.len() {
                match answers.next() {
                    Some(Ok(v)) => seen.push(v.first().copied().unwrap_or(false)),
                    Some(Err(e)) => {
                        seen.push(false);
                        error.get_or_insert(e);
                    }
                    None => seen.push(false),
                }
            }
            match error {
                Some(e) => Err(e),
                None => Ok(seen),
            }
        })
        .collect()
}

/// With `one_statement`, each connection's share of the viewers is checked by one call
/// of the table's [`CheckFunction`]; without, by a pipeline of settings + check
/// statements per viewer (as Supabase runs one query per subscription).
async fn visible_batched(
    pool: &Pool,
    table: &TableInfo,
    checks: &[Check<'_>],
    one_statement: bool,
) -> Vec<Result<Vec<bool>, Error>> {
    let sql = check_sql(table);
    let function = one_statement.then(|| CheckFunction::new(table));
    let per_conn = checks.len().div_ceil(pool.size()).clamp(1, BATCH);
    let (sql, function) = (&sql, &function);
    let batches = join_all(checks.chunks(per_conn).map(|chunk| async move {
        let answers = match function {
            Some(function) => function.call(pool, chunk).await,
            None => pipelined(pool, sql, table.pk.len(), chunk).await,
        };
        match answers {
            Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => {
                warn!(table = %table.name, error = %e, "a batched RLS check failed: checking its viewers one by one");
                let mut out = Vec::with_capacity(chunk.len());
                for check in chunk {
                    out.push(
                        pipelined(pool, sql, table.pk.len(), std::slice::from_ref(check))
                            .await
                            .map(|mut v| v.pop().unwrap_or_default()),
                    );
                }
                out
            }
        }
    }))
    .await;
    batches.into_iter().flatten().collect()
}

/// `select k.i from unnest($1::int4[], $2::text[], …) k(i, c0, …)
///  cross join lateral (select from t where t.pk0 = k.c0::type0 and … limit 1) x`
///
/// The LATERAL subquery pins the plan to one primary-key index probe per row: written as
/// `where exists (…)`, the planner may pick a hash join over a sequential scan of the
/// whole table, which evaluates the RLS policy on every row of the table, per viewer (the
/// profile of the 1,000-user bench: 25–60 ms per check at 5,000 rows, growing with the
/// table). `limit 1` changes nothing (the key is unique) but makes the probe a
/// parameterized nested loop whatever the estimates.
fn check_sql(table: &TableInfo) -> String {
    let mut unnest = vec!["$1::int4[]".to_owned()];
    let mut names = vec!["i".to_owned()];
    let mut conds = Vec::new();
    for (n, &i) in table.pk.iter().enumerate() {
        let col = &table.columns[i];
        unnest.push(format!("${}::text[]", n + 2));
        names.push(format!("c{n}"));
        conds.push(format!("t.{} = k.c{n}::{}", quote_ident(&col.name), col.sql_type));
    }
    format!(
        "select k.i from unnest({}) k({}) cross join lateral (select from {}.{} t where {} limit 1) x",
        unnest.join(", "),
        names.join(", "),
        quote_ident(&table.schema),
        quote_ident(&table.name),
        conds.join(" and ")
    )
}

/// The per-table `pg_temp` function that checks many viewers in one statement:
/// `f(roles, claims, subs, keys, starts, counts)` returns `(v, i)` for every row `i` (of
/// viewer `v`'s `counts[v]` rows, whose key columns start at `keys[starts[v] * pk_len]`)
/// that viewer `v` (1-based) may SELECT.
struct CheckFunction {
    name: String,
    create: String,
    call: String,
}

impl CheckFunction {
    fn new(table: &TableInfo) -> CheckFunction {
        use std::hash::{Hash, Hasher};
        // The name follows the table's name and key, so a changed table gets a new function.
        let mut h = std::hash::DefaultHasher::new();
        (&table.schema, &table.name).hash(&mut h);
        for &c in &table.pk {
            (&table.columns[c].name, &table.columns[c].sql_type).hash(&mut h);
        }
        let name = format!("rs_rls_{}_{:016x}", table.oid, h.finish());
        // Parameters are qualified with the function's name, the loop variable with its
        // label: a table column called `keys` or `v` must not be ambiguous.
        let name_ = &name;
        let n = table.pk.len();
        let conds: Vec<String> = table
            .pk
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                let col = &table.columns[c];
                format!(
                    "t.{} = {name_}.keys[({name_}.starts[viewers.v] + k.i) * {n} + {}]::{}",
                    quote_ident(&col.name),
                    j + 1,
                    col.sql_type
                )
            })
            .collect();
        let probe = format!(
            "select viewers.v, k.i from generate_series(0, {name_}.counts[viewers.v] - 1) k(i) \
             cross join lateral (select from {}.{} t where {} limit 1) x",
            quote_ident(&table.schema),
            quote_ident(&table.name),
            conds.join(" and ")
        );
        // `role` and the claims are set transaction-locally (the statement is its own
        // transaction); the probe is planned once per role and cached, generic because
        // its arguments are arrays (see BEGIN).
        // Settings are assignments (PL/pgSQL evaluates those without starting a query,
        // unlike PERFORM), and `role` is set only when it changes (viewers come sorted
        // by role): the settings were most of a viewer's cost.
        let create = format!(
            "create or replace function pg_temp.{name}(roles text[], claims text[], subs text[], keys text[], starts int[], counts int[]) \
             returns table(viewer int, row_index int) language plpgsql \
             set plan_cache_mode = force_generic_plan set enable_seqscan = off as $rs$ \
             declare active_role text; ignored text; \
             begin \
               <<viewers>> for v in 1 .. coalesce(array_length(roles, 1), 0) loop \
                 if active_role is distinct from roles[v] then \
                   ignored := set_config('role', roles[v], true); \
                   active_role := roles[v]; \
                 end if; \
                 ignored := set_config('request.jwt.claims', claims[v], true); \
                 ignored := set_config('request.jwt.claim.sub', subs[v], true); \
                 ignored := set_config('request.jwt.claim.role', roles[v], true); \
                 return query {probe}; \
               end loop; \
             end $rs$"
        );
        let call = format!("select viewer, row_index from pg_temp.{name}($1, $2, $3, $4, $5, $6)");
        CheckFunction { name, create, call }
    }

    /// Checks `checks` in one statement on one connection.
    async fn call(&self, pool: &Pool, checks: &[Check<'_>]) -> Result<Vec<Vec<bool>>, Error> {
        let mut conn = pool.checkout().await?;
        conn.ensure_function(&self.name, &self.create).await?;
        let call = conn.prepare_cached(&self.call).await?;
        // Viewers of one role together: the probe is planned again when the role changes.
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by_key(|&i| checks[i].viewer.role);
        let mut roles = Vec::with_capacity(checks.len());
        let mut claims = Vec::with_capacity(checks.len());
        let mut subs = Vec::with_capacity(checks.len());
        let mut starts = Vec::with_capacity(checks.len());
        let mut counts = Vec::with_capacity(checks.len());
        let mut keys: Vec<&str> = Vec::new();
        let mut row_count = 0i32;
        for &i in &order {
            let c = &checks[i];
            roles.push(c.viewer.role);
            claims.push(c.viewer.claims);
            subs.push(c.viewer.sub.unwrap_or(""));
            starts.push(row_count);
            counts.push(c.rows.len() as i32);
            row_count += c.rows.len() as i32;
            for row in &c.rows {
                keys.extend(row.iter().map(String::as_str));
            }
        }
        let rows = conn
            .query(&call, &[&roles, &claims, &subs, &keys, &starts, &counts])
            .await?;
        let mut out: Vec<Vec<bool>> = checks.iter().map(|c| vec![false; c.rows.len()]).collect();
        for row in rows {
            let (Ok(v), Ok(i)) = (row.try_get::<_, i32>(0), row.try_get::<_, i32>(1)) else {
                continue;
            };
            let seen = usize::try_from(v - 1)
                .ok()
                .and_then(|v| order.get(v))
                .and_then(|&c| out.get_mut(c))
                .and_then(|seen| usize::try_from(i).ok().and_then(|i| seen.get_mut(i)));
            if let Some(s) = seen {
                *s = true;
            }
        }
        Ok(out)
    }
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, Error>> + Send + 'a>>;

/// One transaction on one connection for all `checks`.
async fn pipelined(pool: &Pool, sql: &str, pk_len: usize, checks: &[Check<'_>]) -> Result<Vec<Vec<bool>>, Error> {
    let mut conn = pool.checkout().await?;
    let settings = conn.prepare_cached(SETTINGS).await?;
    let check = conn.prepare_cached(sql).await?;
    // Arguments first, so the futures below can borrow them.
    let indexes: Vec<Vec<i32>> = checks.iter().map(|c| (0..c.rows.len() as i32).collect()).collect();
    let columns: Vec<Vec<Vec<&str>>> = checks
        .iter()
        .map(|c| {
            (0..pk_len)
                .map(|k| c.rows.iter().map(|r| r.get(k).map_or("", String::as_str)).collect())
                .collect()
        })
        .collect();
    let subs: Vec<&str> = checks.iter().map(|c| c.viewer.sub.unwrap_or("")).collect();
    let setting_args: Vec<[&(dyn ToSql + Sync); 3]> = checks
        .iter()
        .zip(&subs)
        .map(|(c, sub)| [&c.viewer.role as &(dyn ToSql + Sync), &c.viewer.claims, sub])
        .collect();
    let check_args: Vec<Vec<&(dyn ToSql + Sync)>> = indexes
        .iter()
        .zip(&columns)
        .map(|(idx, cols)| {
            let mut a: Vec<&(dyn ToSql + Sync)> = vec![idx];
            a.extend(cols.iter().map(|c| c as &(dyn ToSql + Sync)));
            a
        })
        .collect();

    // Sent in this order on first poll: begin, (settings, check)*, rollback.
    let conn = &*conn;
    let mut steps: Vec<Pending<'_>> = Vec::with_capacity(checks.len() * 2 + 2);
    steps.push(Box::pin(
        async move { conn.batch_execute(BEGIN).await.map(|_| Vec::new()) },
    ));
    for (s, c) in setting_args.iter().zip(&check_args) {
        steps.push(Box::pin(conn.query(&settings, s)));
        steps.push(Box::pin(conn.query(&check, c)));
    }
    steps.push(Box::pin(async move {
        conn.batch_execute("rollback").await.map(|_| Vec::new())
    }));
    let mut results = join_all(steps).await.into_iter();
    results.next().transpose()?;
    let mut out = Vec::with_capacity(checks.len());
    for c in checks {
        results.next().transpose()?;
        let rows = results.next().transpose()?.unwrap_or_default();
        let mut seen = vec![false; c.rows.len()];
        for row in rows {
            let i: i32 = row.get(0);
            if let Some(s) = usize::try_from(i).ok().and_then(|i| seen.get_mut(i)) {
                *s = true;
            }
        }
        out.push(seen);
    }
    // The rollback's own error matters less than the answers, but it is logged.
    if let Some(Err(e)) = results.next() {
        warn!(error = %e, "rollback after RLS checks failed");
    }
    Ok(out)
}
