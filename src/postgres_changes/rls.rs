//! Row Level Security, checked the way Supabase does (a SELECT by primary key as the
//! subscriber's role with its JWT claims set), but batched:
//!
//! * one statement per (role, claims) viewer per table covers all rows of a chunk;
//! * viewers are spread over the pool's connections, and on each connection all of its
//!   viewers run in ONE transaction, their `set_config` + check pairs pipelined (settings
//!   are transaction-local, so each pair sees its own viewer), ending in a rollback;
//! * if anything in such a batch fails (a policy that raises aborts the transaction), the
//!   batch is run again one viewer per transaction, so only the failing viewer loses its
//!   rows (Supabase issue #2093 lost everyone's).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};
use tracing::{debug, warn};

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

/// Most viewers pipelined in one transaction.
const BATCH: usize = 256;

/// How long [`wait_visible`] waits at most.
const VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// The transactions among `xids` that a new snapshot does not see yet (32-bit ids are
/// widened with the epoch of the snapshot's xmax).
const NOT_VISIBLE: &str = "select count(*) from unnest($1::int8[]) x, (select txid_current_snapshot() s) q \
     where not txid_visible_in_snapshot(case when x <= (txid_snapshot_xmax(q.s) & 4294967295) \
       then ((txid_snapshot_xmax(q.s) >> 32) << 32) | x \
       else (greatest((txid_snapshot_xmax(q.s) >> 32) - 1, 0) << 32) | x end, q.s)";

/// Waits until snapshots taken from now on see the transactions `xids`.
///
/// Postgres flushes a commit record (and so may stream it) before it makes the
/// transaction visible to other sessions; a check in between would judge a committed row
/// missing and drop it for every viewer. Seen in the bench on a busy machine with
/// `synchronous_commit = on`. Gives up after [`VISIBLE_WAIT`] (then checks anyway).
pub async fn wait_visible(pool: &Pool, xids: &[u32]) {
    if xids.is_empty() {
        return;
    }
    let ids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    let started = Instant::now();
    loop {
        let pending = async {
            let mut conn = pool.checkout().await?;
            let statement = conn.prepare_cached(NOT_VISIBLE).await?;
            conn.query_one(&statement, &[&ids]).await.map(|r| r.get::<_, i64>(0))
        }
        .await;
        match pending {
            Ok(0) => return,
            Ok(n) => debug!(pending = n, "committed transactions not visible yet: waiting"),
            Err(e) => {
                warn!(error = %e, "cannot check that the transactions are visible: checking RLS now");
                return;
            }
        }
        if started.elapsed() > VISIBLE_WAIT {
            warn!("committed transactions still not visible after 2 s: checking RLS now");
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Opens the check transaction. The check's arguments are arrays, whose length a custom
/// plan knows: Postgres then judges the generic plan (10 elements assumed) costlier and
/// plans every execution again (the profile: planning was most of the database's work).
/// The generic plan is the same nested loop of key probes, so it is forced.
const BEGIN: &str = "begin; set local plan_cache_mode = force_generic_plan";

const SETTINGS: &str = "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
     set_config('request.jwt.claim.sub', $3, true), set_config('request.jwt.claim.role', $1, true)";

/// For each check, per row: may the viewer SELECT it now. An error is that viewer's only.
///
/// With `batch` false (`POSTGRES_CHANGES_RLS_BATCH=false`), every (viewer, row) pair gets
/// its own settings + check statements, as Supabase's `apply_rls` does per subscription
/// and change; still pipelined over the pool, so the difference measured is the
/// statement count.
pub async fn visible(
    pool: &Pool,
    table: &TableInfo,
    checks: &[Check<'_>],
    batch: bool,
) -> Vec<Result<Vec<bool>, Error>> {
    let _timer = RlsTimer::start(Rls::PostgresChanges, checks.len());
    if batch {
        return visible_batched(pool, table, checks).await;
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
    let mut answers = visible_batched(pool, table, &single).await.into_iter();
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

async fn visible_batched(pool: &Pool, table: &TableInfo, checks: &[Check<'_>]) -> Vec<Result<Vec<bool>, Error>> {
    let sql = check_sql(table);
    let per_conn = checks.len().div_ceil(pool.size()).clamp(1, BATCH);
    let sql = &sql;
    let batches = join_all(checks.chunks(per_conn).map(|chunk| async move {
        match pipelined(pool, sql, table.pk.len(), chunk).await {
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
