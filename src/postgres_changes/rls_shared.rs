//! RLS checked once per row for every viewer of a role: the round's rows joined with the
//! distinct viewer groups in ONE statement, the policies rewritten by [`policy`] so that
//! what they read of the viewer comes from the group list. The cost grows with rows and
//! groups, not with rows × viewers: `user_id = auth.uid()` over 1,000 viewers is one
//! hash join, not 1,000 probes.
//!
//! Fails closed everywhere: the statement re-reads the plan's guard in its own snapshot
//! and answers only a mismatch marker when it changed; a statement error, a viewer whose
//! claim functions fail, or a table [`policy`] cannot share all go back to the
//! per-viewer check ([`super::rls`]), which is always exact.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tracing::{debug, info, warn};

use super::catalog::{quote_ident, TableInfo};
use super::filter::Cell;
use super::group_equality::GroupEquality;
use super::policy::{self, guard_function_sql, GroupValue, Guard, Plan, SharedPlan, GUARD_FUNCTION, SHARED_SETTINGS};
use super::pool::Pool;
use super::rls::Viewer;
use super::visibility::{not_visible, Pending};
use crate::observability::metrics::{Rls, RlsTimer};

/// A per-viewer plan is made again after this long (the policies may have become
/// shareable); a shared one is checked by its guard on every use.
const PER_VIEWER_RECHECK: Duration = Duration::from_secs(10);

/// Most cached claim-function values (the map is emptied when full).
const VALUES_CACHE: usize = 100_000;

/// A (table, role) pair's plan and the guard it was made from.
struct Entry {
    plan: Plan,
    /// The guard document (JSON text) the shared statement must find unchanged.
    guard: String,
    made: Instant,
}

/// Claim-function values of one viewer group, as text (`None`: SQL NULL); `None` for the
/// whole group when they could not be computed (that viewer is checked on its own).
type Values = Option<Arc<[Option<String>]>>;

/// (functions' digest, role, claims, sub)
type ValuesKey = (u64, String, Arc<str>, Option<String>);

/// Plans and claim values, shared by all delivery rounds.
#[derive(Default)]
pub struct SharedRls {
    plans: Mutex<HashMap<(u32, String), Arc<Entry>>>,
    values: Mutex<HashMap<ValuesKey, Values>>,
}

/// What the shared check decided for a role's groups. Groups with equal policy values
/// form a class and get its answers, so the answers are (row, class) pairs: with a
/// `true` policy a round over 1,000 viewers answers one class per row, not 1,000.
pub struct Shared {
    /// Per group (as given): its class; `None`: check it per viewer.
    pub class_of: Vec<Option<u32>>,
    /// How many classes.
    pub classes: u32,
    /// Visible (row index, class) pairs.
    pub pairs: Vec<(u32, u32)>,
}

impl Shared {
    /// Whether `group` sees `row`; `None` when the group was not decided. Linear in the
    /// pairs: a round indexes them instead.
    pub fn sees(&self, group: usize, row: usize) -> Option<bool> {
        let class = self.class_of.get(group).copied().flatten()?;
        Some(u32::try_from(row).is_ok_and(|r| self.pairs.contains(&(r, class))))
    }
}

/// One row of a round: its primary key (texts in `table.pk` order) and, when known, the
/// image the change carried (by catalog column), which lets the check leave out groups
/// that cannot see it.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    pub key: &'a [String],
    pub image: Option<&'a [Cell<'a>]>,
}

/// One viewer group of a role.
#[derive(Clone, Copy)]
pub struct Group<'a> {
    /// Who.
    pub viewer: Viewer<'a>,
    /// Claims as shared (the cache key).
    pub claims: &'a Arc<str>,
}

impl SharedRls {
    /// Checks `rows` for every group of `role`
    /// at once. `None`: the table cannot be shared for this role now, check everyone
    /// per viewer. Otherwise which groups it decided and what they see.
    pub async fn check(
        &self,
        pool: &Pool,
        table: &TableInfo,
        role: &str,
        groups: &[Group<'_>],
        rows: &[Row<'_>],
        pending: &Pending,
    ) -> Option<Shared> {
        let entry = self.plan(pool, table, role).await?;
        let Plan::Shared(plan) = &entry.plan else {
            return None;
        };
        let values = self.values(pool, plan, role, groups).await;
        let ready: Vec<usize> = (0..groups.len()).filter(|&g| values[g].is_some()).collect();
        let mut out = Shared {
            class_of: vec![None; groups.len()],
            classes: 0,
            pairs: Vec::new(),
        };
        if ready.is_empty() {
            return Some(out);
        }
        let timer = RlsTimer::start(Rls::PostgresChangesShared, ready.len());
        let check = Statement {
            table,
            role,
            plan,
            guard: &entry.guard,
        };
        let mut result = run(pool, &check, groups, &values, &ready, rows, pending.unseen()).await;
        if matches!(result, Ok(Outcome::NotVisible)) {
            pending.wait(pool).await;
            result = run(pool, &check, groups, &values, &ready, rows, &[]).await;
        }
        drop(timer);
        match result {
            Ok(Outcome::Answer(answer)) => {
                pending.saw();
                for (&g, class) in ready.iter().zip(answer.class_of) {
                    out.class_of[g] = Some(class);
                }
                out.classes = answer.classes;
                out.pairs = answer.pairs;
                Some(out)
            }
            Ok(Outcome::NotVisible) => {
                warn!(table = %table.name, role, "the round's transactions are still not visible: checking these viewers one by one");
                None
            }
            Ok(Outcome::GuardChanged) => {
                info!(table = %table.name, role, "RLS policies, grants or functions changed: planning the shared check again");
                self.forget(table.oid, role);
                None
            }
            Err(e) => {
                warn!(table = %table.name, role, error = %super::subscribe::exception_text(&e),
                    "the shared RLS check failed: checking these viewers one by one");
                self.forget(table.oid, role);
                None
            }
        }
    }

    fn forget(&self, table: u32, role: &str) {
        crate::sync::lock(&self.plans, "rls plans").remove(&(table, role.to_owned()));
    }

    /// The cached plan, or a new one read from the catalog.
    async fn plan(&self, pool: &Pool, table: &TableInfo, role: &str) -> Option<Arc<Entry>> {
        let key = (table.oid, role.to_owned());
        let previous = crate::sync::lock(&self.plans, "rls plans").get(&key).cloned();
        if let Some(e) = &previous {
            if matches!(e.plan, Plan::Shared(_)) || e.made.elapsed() < PER_VIEWER_RECHECK {
                return Some(e.clone());
            }
        }
        let entry = match make_plan(pool, table, role).await {
            Ok(Some(e)) => Arc::new(e),
            Ok(None) => return None,
            Err(e) => {
                warn!(table = %table.name, role, error = %e, "cannot read the RLS policies: checking viewers one by one");
                return None;
            }
        };
        // Another round may have planned the same meanwhile (rounds overlap).
        let raced = crate::sync::lock(&self.plans, "rls plans").insert(key, entry.clone());
        let previous = raced.or(previous);
        match &entry.plan {
            // Said once, not at every re-check.
            Plan::PerViewer(reason) if previous.is_some_and(|p| p.plan == entry.plan) => {
                debug!(table = %table.name, role, reason = %reason, "RLS: still checking viewers one by one")
            }
            Plan::PerViewer(reason) => {
                info!(table = %table.name, role, reason = %reason, "RLS: this table's viewers are checked one by one")
            }
            Plan::Shared(p) => {
                debug!(table = %table.name, role, qual = %p.qual, "RLS: one shared check per round for all viewers")
            }
        }
        Some(entry)
    }

    /// The claim-function values of each group, computing the missing ones.
    async fn values(&self, pool: &Pool, plan: &SharedPlan, role: &str, groups: &[Group<'_>]) -> Vec<Values> {
        let calls = plan.function_calls();
        if calls.is_empty() {
            return vec![Some(Arc::from(Vec::new())); groups.len()];
        }
        let key = |g: &Group<'_>| -> ValuesKey {
            (
                plan.functions_digest,
                role.to_owned(),
                g.claims.clone(),
                g.viewer.sub.map(str::to_owned),
            )
        };
        let mut out: Vec<Option<Values>> = {
            let cache = crate::sync::lock(&self.values, "rls values");
            groups.iter().map(|g| cache.get(&key(g)).cloned()).collect()
        };
        let missing: Vec<usize> = (0..groups.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let computed = match compute_values(pool, plan, &calls, role, groups, &missing).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(role, error = %super::subscribe::exception_text(&e), "cannot compute the viewers' claim functions: checking them one by one");
                    // Not cached: a passing database error must not pin viewers to the slow path.
                    for &i in &missing {
                        out[i] = Some(None);
                    }
                    return out.into_iter().map(Option::flatten).collect();
                }
            };
            let mut cache = crate::sync::lock(&self.values, "rls values");
            if cache.len() + missing.len() > VALUES_CACHE {
                cache.clear();
            }
            for (&i, v) in missing.iter().zip(computed) {
                cache.insert(key(&groups[i]), v.clone());
                out[i] = Some(v);
            }
        }
        out.into_iter().map(Option::flatten).collect()
    }
}

/// Reads the guard and classifies; `None` if the table is gone.
async fn make_plan(pool: &Pool, table: &TableInfo, role: &str) -> Result<Option<Entry>, tokio_postgres::Error> {
    let mut conn = pool.checkout().await?;
    let read = format!("select {GUARD_FUNCTION}($1::oid, $2::text, $3::text[])::text");
    conn.ensure_function(GUARD_FUNCTION, &guard_function_sql()).await?;
    conn.batch_execute(SHARED_SETTINGS).await?;
    let result = async {
        let statement = conn.prepare_cached(&read).await?;
        let none: Vec<String> = Vec::new();
        let first: String = conn.query_one(&statement, &[&table.oid, &role, &none]).await?.get(0);
        let plan = match serde_json::from_str::<Guard>(&first) {
            Ok(g) => policy::classify(table, &g),
            Err(e) => Plan::PerViewer(format!("the policy catalog could not be read ({e})")),
        };
        let Plan::Shared(shared) = &plan else {
            return Ok((plan, first));
        };
        if shared.builtins.is_empty() {
            return Ok((plan, first));
        }
        // Read again with the builtins' EXECUTE privilege; the rest must be unchanged.
        let second: String = conn
            .query_one(&statement, &[&table.oid, &role, &shared.builtins])
            .await?
            .get(0);
        let same = |a: &str, b: &str| -> bool {
            let strip = |s: &str| {
                serde_json::from_str::<serde_json::Value>(s).ok().map(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("builtins");
                    }
                    v
                })
            };
            strip(a).is_some() && strip(a) == strip(b)
        };
        if !same(&first, &second) {
            return Ok((Plan::PerViewer("the policies changed while being read".into()), second));
        }
        let allowed = serde_json::from_str::<Guard>(&second)
            .map(|g| policy::classify(table, &g))
            .unwrap_or_else(|e| Plan::PerViewer(format!("the policy catalog could not be read ({e})")));
        Ok((allowed, second))
    }
    .await;
    if let Err(e) = conn.batch_execute("rollback").await {
        debug!(error = %e, "rollback after reading RLS policies failed");
    }
    let (plan, guard) = result?;
    Ok(Some(Entry {
        plan,
        guard,
        made: Instant::now(),
    }))
}

/// Runs the claim functions for the `missing` groups, each as its viewer (role and
/// settings as a per-viewer check sets them), in one statement; a group whose functions
/// raise gets `None`.
async fn compute_values(
    pool: &Pool,
    plan: &SharedPlan,
    calls: &[(usize, &str)],
    role: &str,
    groups: &[Group<'_>],
    missing: &[usize],
) -> Result<Vec<Values>, tokio_postgres::Error> {
    let name = format!("rs_claims_{:016x}", plan.functions_digest);
    let outs: Vec<String> = (0..calls.len()).map(|i| format!("v{i} text")).collect();
    let sets: Vec<String> = calls
        .iter()
        .enumerate()
        .map(|(i, (_, call))| format!("v{i} := ({call}())::text;"))
        .collect();
    let create = format!(
        "create or replace function pg_temp.{name}(roles text[], claims text[], subs text[]) \
         returns table(gi int, {}) language plpgsql as $rs$ \
         declare ignored text; \
         begin \
           for n in 1 .. coalesce(array_length(roles, 1), 0) loop \
             begin \
               ignored := set_config('role', roles[n], true); \
               ignored := set_config('request.jwt.claims', claims[n], true); \
               ignored := set_config('request.jwt.claim.sub', subs[n], true); \
               ignored := set_config('request.jwt.claim.role', roles[n], true); \
               gi := n; {} \
               return next; \
             exception when others then \
               null; \
             end; \
           end loop; \
         end $rs$",
        outs.join(", "),
        sets.join(" ")
    );
    let columns: Vec<String> = (0..calls.len()).map(|i| format!("v{i}")).collect();
    let call = format!("select gi, {} from pg_temp.{name}($1, $2, $3)", columns.join(", "));
    let roles: Vec<&str> = missing.iter().map(|_| role).collect();
    let claims: Vec<&str> = missing.iter().map(|&i| &*groups[i].viewer.claims).collect();
    let subs: Vec<&str> = missing.iter().map(|&i| groups[i].viewer.sub.unwrap_or("")).collect();

    let mut conn = pool.checkout().await?;
    conn.ensure_function(&name, &create).await?;
    let statement = conn.prepare_cached(&call).await?;
    conn.batch_execute("begin").await?;
    let rows = conn.query(&statement, &[&roles, &claims, &subs]).await;
    if let Err(e) = conn.batch_execute("rollback").await {
        debug!(error = %e, "rollback after computing claim functions failed");
    }
    let mut out: Vec<Values> = vec![None; missing.len()];
    for row in rows? {
        let Ok(gi) = row.try_get::<_, i32>(0) else { continue };
        let values: Vec<Option<String>> = (0..calls.len())
            .map(|c| row.try_get::<_, Option<String>>(c + 1).ok().flatten())
            .collect();
        if let Some(slot) = usize::try_from(gi - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(Arc::from(values));
        }
    }
    Ok(out)
}

/// The shared statement for `table` under `plan`. Parameters: $1 table, $2 role, $3
/// builtins, $4 expected guard, $5 the transactions it must see, $6 row indexes, then one
/// text[] per key column, then the group indexes and one text[] per group value.
///
/// It answers (row, group, null) for each visible pair, and (row, null, like) for a row
/// checked through another alike in the columns the policies read ([`SharedPlan::row_key`]);
/// or a marker instead when the guard differs (-1) or its snapshot does not see the
/// transactions (-2).
///
/// The round's rows and the groups are materialized first, and the policy reads the rows
/// under the table's name. The planner then has no statistics for them, and estimates
/// their joins by defaults instead of by the table's: statistics taken before the rows
/// of a new team existed put their join with `members` at one row, and the planner
/// rescanned the 1,000 groups for each of 15,000 (row, member) pairs (7.4 s for 150
/// rows; 4.8 ms materialized).
fn statement(table: &TableInfo, plan: &SharedPlan, alike_rows: bool) -> String {
    let own = quote_ident(&table.name);
    let mut p = 6;
    let mut key_cols = vec!["__rs_ki".to_owned()];
    let mut key_args = vec!["$6::int4[]".to_owned()];
    let mut join = Vec::new();
    for (n, &i) in table.pk.iter().enumerate() {
        p += 1;
        let col = &table.columns[i];
        key_cols.push(format!("__rs_kc{n}"));
        key_args.push(format!("${p}::text[]"));
        join.push(format!(
            "{own}.{} = __rs_k.__rs_kc{n}::{}",
            quote_ident(&col.name),
            col.sql_type
        ));
    }
    p += 1;
    let mut group_cols = vec!["__rs_gi".to_owned()];
    let mut group_args = vec![format!("${p}::int4[]")];
    let mut group_select = vec!["__rs_u.__rs_gi".to_owned()];
    for (i, v) in plan.values.iter().enumerate() {
        p += 1;
        group_cols.push(format!("__rs_v{i}"));
        group_args.push(format!("${p}::text[]"));
        group_select.push(match v {
            GroupValue::Function { returns, .. } => format!("__rs_u.__rs_v{i}::{returns} as __rs_v{i}"),
            GroupValue::Claims | GroupValue::Sub | GroupValue::Role => format!("__rs_u.__rs_v{i}"),
        });
    }
    if join.is_empty() {
        join.push("false".to_owned());
    }
    // With a row key, one row per distinct key is checked and the others are answered
    // like it (the smallest index of each key stands for it).
    let (alike, checked, like_rows) = match plan.row_key.as_ref().filter(|_| alike_rows) {
        Some(key) => {
            let by: Vec<String> = key
                .iter()
                .map(|&c| format!("{own}.{}::text", quote_ident(&table.columns[c].name)))
                .collect();
            let window = match by.is_empty() {
                true => "()".to_owned(),
                false => format!("(partition by {})", by.join(", ")),
            };
            (
                format!(
                    "__rs_alike as materialized (select {own}.__rs_ki, min({own}.__rs_ki) over {window} as __rs_like \
                     from __rs_rows as {own}), "
                ),
                "(select * from __rs_rows where __rs_ki in (select __rs_like from __rs_alike))",
                "union all select __rs_ki, null, __rs_like from __rs_alike where __rs_ki <> __rs_like ",
            )
        }
        None => (String::new(), "__rs_rows", ""),
    };
    format!(
        "with __rs_guard as materialized (select {GUARD_FUNCTION}($1::oid, $2::text, $3::text[]) = $4::text::jsonb as __rs_ok), \
         __rs_seen as materialized (select ({}) = 0 as __rs_ok), \
         __rs_rows as materialized (select __rs_k.__rs_ki, {own}.* from unnest({}) as __rs_k({}) join {}.{own} on {}), {alike}\
         __rs_groups as materialized (select {} from unnest({}) as __rs_u({})) \
         select {own}.__rs_ki, __rs_g.__rs_gi, null::int4 from __rs_guard cross join __rs_seen \
         cross join {checked} as {own} \
         cross join __rs_groups as __rs_g \
         where __rs_guard.__rs_ok and __rs_seen.__rs_ok and ({}) \
         {like_rows}\
         union all select -1, -1, null from __rs_guard where not __rs_guard.__rs_ok \
         union all select -2, -2, null from __rs_seen where not __rs_seen.__rs_ok",
        not_visible("$5::int8[]"),
        key_args.join(", "),
        key_cols.join(", "),
        quote_ident(&table.schema),
        join.join(" and "),
        group_select.join(", "),
        group_args.join(", "),
        group_cols.join(", "),
        plan.qual
    )
}

/// The shared statement's answer for the `ready` groups.
struct Answer {
    /// Per `ready` group: its class (distinct values).
    class_of: Vec<u32>,
    classes: u32,
    /// Visible (row index, class) pairs.
    pairs: Vec<(u32, u32)>,
}

/// What the shared statement is run for.
struct Statement<'a> {
    table: &'a TableInfo,
    role: &'a str,
    plan: &'a SharedPlan,
    /// The guard document the plan was made from.
    guard: &'a str,
}

/// What the shared statement said.
enum Outcome {
    Answer(Answer),
    /// The policies, grants or functions differ from the plan's guard.
    GuardChanged,
    /// Its snapshot does not see all of the round's transactions.
    NotVisible,
}

/// Runs the shared statement for the `ready` groups, in a snapshot that must see
/// `unseen`.
async fn run(
    pool: &Pool,
    check: &Statement<'_>,
    groups: &[Group<'_>],
    values: &[Values],
    ready: &[usize],
    rows: &[Row<'_>],
    unseen: &[i64],
) -> Result<Outcome, tokio_postgres::Error> {
    let Statement {
        table,
        role,
        plan,
        guard,
    } = *check;
    let sql = statement(table, plan, may_be_alike(plan, rows));
    let row_index: Vec<i32> = (0..rows.len() as i32).collect();
    let key_columns: Vec<Vec<&str>> = (0..table.pk.len())
        .map(|k| rows.iter().map(|r| r.key.get(k).map_or("", String::as_str)).collect())
        .collect();
    let (distinct, class_of) = distinct_values(plan, groups, values, ready);
    // The classes asked about; the others see none of these rows. The statement runs
    // even when none is left, so its guard still notices changed policies.
    let asked: Vec<usize> = match plan.equality.and_then(|e| row_values(e, rows).map(|v| (e, v))) {
        Some((e, wanted)) => (0..distinct.len())
            .filter(|&d| distinct[d][e.value].is_some_and(|v| wanted.contains(v)))
            .collect(),
        None => (0..distinct.len()).collect(),
    };
    let group_index: Vec<i32> = asked.iter().map(|&d| d as i32).collect();
    let value_columns: Vec<Vec<Option<&str>>> = (0..plan.values.len())
        .map(|i| asked.iter().map(|&d| distinct[d][i]).collect())
        .collect();
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&table.oid, &role, &plan.builtins, &guard, &unseen, &row_index];
    args.extend(key_columns.iter().map(|c| c as &(dyn ToSql + Sync)));
    args.push(&group_index);
    args.extend(value_columns.iter().map(|c| c as &(dyn ToSql + Sync)));

    let started = Instant::now();
    let mut conn = pool.checkout().await?;
    conn.ensure_function(GUARD_FUNCTION, &guard_function_sql()).await?;
    let statement = match conn.cached(&sql) {
        Some(statement) => statement,
        None => {
            // Prepared under the check's settings: names resolve as they will run.
            conn.batch_execute(SHARED_SETTINGS).await?;
            let statement = conn.prepare_cached(&sql).await;
            conn.batch_execute("rollback").await?;
            statement?
        }
    };
    // Pipelined: the three are sent at once and answered in order, one round trip. Each
    // answer is checked, so a failed `begin` cannot let the check count.
    let conn = &*conn;
    let (settings, result, rollback) = tokio::join!(
        conn.batch_execute(SHARED_SETTINGS),
        conn.query(&statement, &args),
        conn.batch_execute("rollback")
    );
    debug!(table = %table.name, rows = rows.len(), groups = ready.len(), distinct = distinct.len(), asked = asked.len(),
        pairs = result.as_ref().map_or(0, Vec::len), ms = started.elapsed().as_secs_f64() * 1e3, "shared RLS check");
    if let Err(e) = rollback {
        debug!(error = %e, "rollback after the shared RLS check failed");
    }
    settings?;
    let classes = distinct.len() as u32;
    let mut pairs = Vec::new();
    // (row, the row it is answered like)
    let mut alike: Vec<(u32, u32)> = Vec::new();
    for row in result? {
        let Ok(r) = row.try_get::<_, i32>(0) else {
            continue;
        };
        match r {
            -1 => return Ok(Outcome::GuardChanged),
            -2 => return Ok(Outcome::NotVisible),
            _ => {}
        }
        let Ok(r) = u32::try_from(r) else {
            continue;
        };
        match (row.try_get::<_, Option<i32>>(1), row.try_get::<_, Option<i32>>(2)) {
            (Ok(Some(g)), _) => {
                if let Ok(g) = u32::try_from(g) {
                    if g < classes {
                        pairs.push((r, g));
                    }
                }
            }
            (_, Ok(Some(like))) => {
                if let Ok(like) = u32::try_from(like) {
                    alike.push((r, like));
                }
            }
            _ => {}
        }
    }
    if !alike.is_empty() {
        pairs.sort_unstable();
        let checked = pairs.len();
        for (r, like) in alike {
            let from = pairs[..checked].partition_point(|p| p.0 < like);
            let to = pairs[..checked].partition_point(|p| p.0 <= like);
            for i in from..to {
                pairs.push((r, pairs[i].1));
            }
        }
    }
    Ok(Outcome::Answer(Answer {
        class_of,
        classes,
        pairs,
    }))
}

/// Whether some of the round's rows may be alike in the columns the policies read, by
/// the images the changes carried: when each row's are known and differ, the statement
/// without the merging is used (it would find nothing to merge, and costs a sort).
/// Using the merging is always sound; this only chooses the cheaper statement.
fn may_be_alike(plan: &SharedPlan, rows: &[Row<'_>]) -> bool {
    let Some(key) = &plan.row_key else {
        return false;
    };
    if rows.len() < 2 {
        return false;
    }
    let mut seen = HashSet::with_capacity(rows.len());
    for row in rows {
        let Some(image) = row.image else {
            return true;
        };
        let mut values = Vec::with_capacity(key.len());
        for &c in key {
            match image.get(c) {
                Some(Cell::Text(t)) => values.push(Some(*t)),
                Some(Cell::Null) => values.push(None),
                Some(Cell::Missing) | None => return true,
            }
        }
        if !seen.insert(values) {
            return true;
        }
    }
    false
}

/// The values the round's rows hold in the equality's column (NULL equals nothing);
/// `None` when some row's value is not known (no image, or unchanged TOAST), so every
/// group must be asked.
fn row_values<'a>(equality: GroupEquality, rows: &[Row<'a>]) -> Option<HashSet<&'a str>> {
    let mut values = HashSet::with_capacity(rows.len());
    for row in rows {
        match row.image?.get(equality.column)? {
            Cell::Text(v) => {
                values.insert(*v);
            }
            Cell::Null => {}
            Cell::Missing => return None,
        }
    }
    Some(values)
}

/// The distinct tuples of group values among the `ready` groups, and per `ready` group
/// the index of its tuple. The rewritten policy reads a viewer only
/// through these values, so groups with equal tuples get equal answers: with a `true`
/// policy a thousand viewers are one group, with `user_id = auth.uid()` two tabs of one
/// user are one.
fn distinct_values<'a>(
    plan: &SharedPlan,
    groups: &[Group<'a>],
    values: &'a [Values],
    ready: &[usize],
) -> (Vec<Vec<Option<&'a str>>>, Vec<u32>) {
    // Function values are stored in call order: the order of the `Function` entries.
    let mut nth = 0;
    let slots: Vec<Option<usize>> = plan
        .values
        .iter()
        .map(|v| {
            matches!(v, GroupValue::Function { .. }).then(|| {
                nth += 1;
                nth - 1
            })
        })
        .collect();
    let mut index: HashMap<Vec<Option<&'a str>>, usize> = HashMap::new();
    let mut distinct = Vec::new();
    let mut class_of: Vec<u32> = Vec::with_capacity(ready.len());
    for &g in ready {
        let viewer = &groups[g].viewer;
        let tuple: Vec<Option<&'a str>> = plan
            .values
            .iter()
            .zip(&slots)
            .map(|(v, slot)| match v {
                GroupValue::Claims => Some(viewer.claims),
                GroupValue::Sub => Some(viewer.sub.unwrap_or("")),
                GroupValue::Role => Some(viewer.role),
                GroupValue::Function { .. } => values[g]
                    .as_ref()
                    .zip(*slot)
                    .and_then(|(vs, n)| vs.get(n))
                    .and_then(|v| v.as_deref()),
            })
            .collect();
        match index.get(&tuple) {
            Some(&d) => class_of.push(d as u32),
            None => {
                class_of.push(distinct.len() as u32);
                index.insert(tuple.clone(), distinct.len());
                distinct.push(tuple);
            }
        }
    }
    (distinct, class_of)
}
