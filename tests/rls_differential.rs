//! Differential test of the shared RLS check (issue 12): random tables, policies drawn
//! from a grammar of realistic shapes, random viewers (claims, roles) and rows. For every
//! (viewer, row) pair the shared statement decides, its answer must equal the per-viewer
//! check's (Supabase's way: a SELECT by primary key as the viewer). Pairs the shared path
//! hands back to the per-viewer check are not counted; the test fails if too few pairs
//! were compared, so a classifier that shares nothing cannot pass.
//!
//! `RLS_DIFF_SCHEMAS` (default 30, × 20 viewers × 20 rows) and `RLS_DIFF_SEED` scale and
//! replay a run; the seed and the count are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::pg::Pg;
use realtime::postgres_changes::catalog::Catalog;
use realtime::postgres_changes::filter::Cell;
use realtime::postgres_changes::pool::Pool;
use realtime::postgres_changes::rls::{self, Check, Viewer};
use realtime::postgres_changes::rls_shared::{Group, Row, SharedRls};
use realtime::postgres_changes::visibility::Pending;
use serde_json::json;

const VIEWERS: usize = 20;
const ROWS: usize = 20;
const USERS: [&str; 5] = [
    "11111111-1111-1111-1111-111111111111",
    "22222222-2222-2222-2222-222222222222",
    "33333333-3333-3333-3333-333333333333",
    "44444444-4444-4444-4444-444444444444",
    "55555555-5555-5555-5555-555555555555",
];
const TEAMS: [&str; 4] = ["red", "blue", "green", "Blocked"];
const STATUSES: [&str; 4] = ["open", "done", "archived", "draft"];

/// After [`realtime::dev::ROLES_SQL`] (Supabase's roles, without inheritance as on
/// Supabase, and auth helpers): an inheriting `editor` that is a member of `staff`.
const SCHEMA: &str = r#"
create role staff nologin; create role editor nologin inherit; grant staff to editor;
grant staff to authenticated;
grant usage on schema public to editor, staff;
grant usage on schema auth to editor, staff;
"#;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One USING clause from the grammar, for table `t` and its join table `m`.
fn shape(r: &mut Rng, t: &str, m: &str, depth: u32) -> String {
    let team = *r.pick(&TEAMS);
    let status = *r.pick(&STATUSES);
    match r.below(if depth > 0 { 13 } else { 12 }) {
        0 => "owner = auth.uid()".into(),
        1 => format!("exists (select 1 from public.{m} mm where mm.team = {t}.team and mm.user_id = auth.uid())"),
        2 => format!("team in (select mm.team from public.{m} mm where mm.user_id = auth.uid())"),
        3 => "auth.role() = 'authenticated'".into(),
        4 => "team = (auth.jwt() -> 'app_metadata' ->> 'team')".into(),
        5 => "team = any (select jsonb_array_elements_text(auth.jwt() -> 'app_metadata' -> 'teams'))".into(),
        6 => format!("status in ('{status}', 'open')"),
        7 => "score > coalesce((auth.jwt() ->> 'level')::int, 0)".into(),
        8 => "(current_setting('request.jwt.claims', true)::jsonb ->> 'tenant') = team".into(),
        9 => format!("lower(team) = lower('{team}') and owner is not null"),
        10 => "(auth.jwt() ->> 'role') = 'editor' or owner = auth.uid()".into(),
        11 => format!("owner = auth.uid() and status <> '{status}'"),
        _ => format!("({}) or ({})", shape(r, t, m, depth - 1), shape(r, t, m, depth - 1)),
    }
}

fn restrictive(r: &mut Rng) -> String {
    match r.below(4) {
        0 => "status <> 'archived'".into(),
        1 => "lower(team) <> 'blocked'".into(),
        2 => "owner is not null".into(),
        _ => "coalesce(auth.jwt() ->> 'banned', 'no') <> 'yes'".into(),
    }
}

/// The DDL of schema `n`: table, join table, policies, rows.
fn schema(r: &mut Rng, n: usize) -> String {
    let (t, m) = (format!("t{n}"), format!("m{n}"));
    let mut sql = format!(
        "create table public.{t} (id int primary key, owner uuid, team text, status text, score int); \
         alter table public.{t} enable row level security; \
         grant select on public.{t} to anon, authenticated, editor; \
         create table public.{m} (team text, user_id uuid); \
         grant select on public.{m} to anon, authenticated, editor, staff;"
    );
    for p in 0..1 + r.below(3) {
        let to = *r.pick(&[
            "authenticated",
            "authenticated",
            "anon, authenticated",
            "public",
            "staff",
            "editor",
        ]);
        let cmd = *r.pick(&["select", "select", "all"]);
        sql += &format!(
            "create policy p{p} on public.{t} for {cmd} to {to} using ({});",
            shape(r, &t, &m, 1)
        );
    }
    if r.chance(40) {
        sql += &format!(
            "create policy r0 on public.{t} as restrictive for select to {} using ({});",
            r.pick(&["authenticated", "public"]),
            restrictive(r)
        );
    }
    if r.chance(20) {
        // A policy for another command must not count.
        sql += &format!("create policy u0 on public.{t} for update to authenticated using (true);");
    }
    for id in 0..ROWS {
        // Some keys have no row: invisible to everyone.
        if r.chance(10) {
            continue;
        }
        let owner = if r.chance(10) {
            "null".to_owned()
        } else {
            format!("'{}'", r.pick(&USERS))
        };
        sql += &format!(
            "insert into public.{t} values ({id}, {owner}, '{}', '{}', {});",
            r.pick(&TEAMS),
            r.pick(&STATUSES),
            r.below(10)
        );
    }
    for _ in 0..r.below(8) {
        sql += &format!(
            "insert into public.{m} values ('{}', '{}');",
            r.pick(&TEAMS),
            r.pick(&USERS)
        );
    }
    sql
}

/// A random viewer: (role, claims JSON, sub).
fn viewer(r: &mut Rng) -> (String, String, Option<String>) {
    let role = (*r.pick(&["authenticated", "authenticated", "authenticated", "anon", "editor"])).to_owned();
    let sub = match r.below(10) {
        0 => None,
        1 => Some("not-a-uuid".to_owned()),
        _ => Some((*r.pick(&USERS)).to_owned()),
    };
    let mut claims = json!({"role": role, "app_metadata": {"team": r.pick(&TEAMS),
        "teams": [r.pick(&TEAMS), r.pick(&TEAMS)]}});
    if let Some(s) = &sub {
        claims["sub"] = json!(s);
    }
    if r.chance(50) {
        claims["level"] = json!(r.below(10));
    }
    if r.chance(50) {
        claims["tenant"] = json!(r.pick(&TEAMS));
    }
    if r.chance(10) {
        claims["banned"] = json!("yes");
    }
    (role, claims.to_string(), sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_check_agrees_with_the_per_viewer_check() {
    let schemas: usize = std::env::var("RLS_DIFF_SCHEMAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("RLS_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("RLS_DIFF_SEED={seed} RLS_DIFF_SCHEMAS={schemas}");
    let mut r = Rng(seed);
    let pg = Pg::start();
    pg.exec(realtime::dev::ROLES_SQL).await;
    pg.exec(SCHEMA).await;
    let pool = Arc::new(Pool::new(pg.url().parse().unwrap(), 2));
    let catalog = Catalog::new(pool.clone());
    let admin = pg.client().await;

    let mut compared = 0usize;
    let mut visible = 0usize;
    let mut shared_schemas = 0usize;
    for n in 0..schemas {
        let ddl = schema(&mut r, n);
        pg.exec(&ddl).await;
        let oid: u32 = admin
            .query_one(&format!("select 'public.t{n}'::regclass::oid"), &[])
            .await
            .unwrap()
            .get(0);
        let table = catalog.table(oid).await.unwrap().unwrap();
        let keys: Vec<Vec<String>> = (0..ROWS).map(|i| vec![i.to_string()]).collect();
        // The rows as a change would carry them (text per catalog column; a key with no
        // row gets NULLs), so the shared check can leave out groups that cannot match.
        let columns: Vec<String> = table.columns.iter().map(|c| format!("{}::text", c.name)).collect();
        let mut texts: Vec<Vec<Option<String>>> = vec![vec![None; table.columns.len()]; ROWS];
        for row in admin
            .query(&format!("select {} from public.t{n}", columns.join(", ")), &[])
            .await
            .unwrap()
        {
            let id: usize = row.get::<_, Option<String>>(0).unwrap().parse().unwrap();
            texts[id] = (0..table.columns.len()).map(|c| row.get(c)).collect();
        }
        let images: Vec<Vec<Cell<'_>>> = texts
            .iter()
            .map(|t| t.iter().map(|v| v.as_deref().map_or(Cell::Null, Cell::Text)).collect())
            .collect();
        let rows: Vec<Row<'_>> = keys
            .iter()
            .zip(&images)
            .map(|(key, image)| Row {
                key,
                image: Some(image),
            })
            .collect();
        let viewers: Vec<(String, Arc<str>, Option<String>)> = (0..VIEWERS)
            .map(|_| {
                let (role, claims, sub) = viewer(&mut r);
                (role, Arc::from(claims), sub)
            })
            .collect();
        // The per-viewer answer of each viewer.
        let checks: Vec<Check<'_>> = viewers
            .iter()
            .map(|(role, claims, sub)| Check {
                viewer: Viewer {
                    role,
                    claims,
                    sub: sub.as_deref(),
                },
                rows: keys.clone(),
            })
            .collect();
        let expected: Vec<Vec<bool>> = rls::visible(&pool, &table, &checks, true)
            .await
            .into_iter()
            .map(|v| v.unwrap_or_else(|_| vec![false; ROWS]))
            .collect();
        // The shared answer, per role as the dispatcher asks.
        let shared = SharedRls::default();
        let mut any_shared = false;
        for role in ["authenticated", "anon", "editor"] {
            let of_role: Vec<usize> = (0..VIEWERS).filter(|&v| viewers[v].0 == role).collect();
            if of_role.is_empty() {
                continue;
            }
            let groups: Vec<Group<'_>> = of_role
                .iter()
                .map(|&v| Group {
                    viewer: Viewer {
                        role,
                        claims: &viewers[v].1,
                        sub: viewers[v].2.as_deref(),
                    },
                    claims: &viewers[v].1,
                })
                .collect();
            let Some(answers) = shared
                .check(&pool, &table, role, &groups, &rows, &Pending::new(&[]))
                .await
            else {
                continue;
            };
            for (g, &v) in of_role.iter().enumerate() {
                if answers.sees(g, 0).is_none() {
                    continue;
                }
                any_shared = true;
                for (row, &want) in expected[v].iter().enumerate() {
                    let seen = answers.sees(g, row) == Some(true);
                    assert_eq!(
                        seen, want,
                        "seed {seed}, schema {n}, viewer {:?}, row {row}: shared {seen} per-viewer {want}\n{ddl}",
                        viewers[v]
                    );
                    compared += 1;
                    visible += usize::from(seen);
                }
            }
        }
        shared_schemas += usize::from(any_shared);
    }
    eprintln!(
        "compared {compared} (viewer, row) pairs ({visible} visible) over {schemas} schemas; {shared_schemas} schemas shared"
    );
    // Most schemas are shareable by construction: a classifier that gives up cannot pass.
    assert!(
        compared >= schemas * VIEWERS * ROWS / 2,
        "only {compared} pairs were decided by the shared check"
    );
    assert!(
        visible > compared / 20,
        "too few visible pairs ({visible}) to mean anything"
    );
}
