//! Security state that changes while subscribers listen (issue: RLS turned on at run
//! time leaked rows until a restart). Each test makes one DDL change between two inserts
//! and checks the change committed right after it, for every viewer. A viewer that must
//! not see a row is checked by ordering: changes arrive in commit order, so the next
//! change it receives must be a later "marker" row it may see, never the hidden one.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

const USER_A: &str = "11111111-1111-1111-1111-111111111111";
const USER_B: &str = "22222222-2222-2222-2222-222222222222";

const SCHEMA: &str = r#"
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
create role auditor nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role, auditor;
create schema auth;
create function auth.uid() returns uuid language sql stable
  as $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
grant usage on schema auth to anon, authenticated, service_role, auditor;
create table public.late (id bigint primary key, owner uuid, body text, secret text);
grant select on public.late to authenticated, auditor;
create publication supabase_realtime for table public.late;
"#;

fn token_for(role: &str, sub: &str) -> String {
    claims_token(json!({"role": role, "sub": sub, "exp": now() + 3600}))
}

async fn setup(extra: &str) -> (Pg, Server) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    if !extra.is_empty() {
        pg.exec(extra).await;
    }
    let server = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    (pg, server)
}

/// A connection subscribed to every change of `public.late` as `role`/`sub`.
async fn viewer(s: &Server, role: &str, sub: &str) -> Client {
    let mut c = s.connect("1.0.0").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "late"}]);
    let (_, reply) = c
        .join_with(
            "realtime:late",
            config(json!({"postgres_changes": bindings})),
            Some(&token_for(role, sub)),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = tokio::time::timeout(Duration::from_secs(10), c.recv_event("system"))
        .await
        .expect("system message");
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL", "{sys:?}");
    c
}

/// The `record` of the next postgres_changes frame.
async fn next_record(c: &mut Client) -> Value {
    let f = tokio::time::timeout(Duration::from_secs(10), c.recv_event("postgres_changes"))
        .await
        .expect("postgres_changes within 10 s");
    f.payload()["data"]["record"].clone()
}

/// Both A and B see row 1 (the first state), proving they are streaming.
async fn both_see_first(pg: &Pg, a: &mut Client, b: &mut Client) {
    pg.exec(&format!("insert into late values (1, '{USER_A}', 'before', 's1')"))
        .await;
    assert_eq!(next_record(a).await["id"], json!(1));
    assert_eq!(next_record(b).await["id"], json!(1));
}

/// Row 2 (A's) was committed right after the DDL; row 3 (B's) after it. A gets 2, B's
/// next change must be 3.
async fn only_owner_sees_second(pg: &Pg, a: &mut Client, b: &mut Client) {
    pg.exec(&format!("insert into late values (2, '{USER_A}', 'private', 's2')"))
        .await;
    pg.exec(&format!("insert into late values (3, '{USER_B}', 'marker', 's3')"))
        .await;
    let seen_by_b = next_record(b).await;
    assert_eq!(
        seen_by_b["id"],
        json!(3),
        "B saw A's row after RLS applied: {seen_by_b}"
    );
    let seen_by_a = next_record(a).await;
    assert_eq!(seen_by_a["id"], json!(2), "{seen_by_a}");
}

const OWN_POLICY: &str =
    "create policy own on public.late for select to authenticated, auditor using (owner = auth.uid());";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_rls_hides_the_next_change() {
    let (pg, s) = setup("").await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    let mut b = viewer(&s, "authenticated", USER_B).await;
    both_see_first(&pg, &mut a, &mut b).await;
    pg.exec(&format!(
        "alter table public.late enable row level security; {OWN_POLICY}"
    ))
    .await;
    only_owner_sees_second(&pg, &mut a, &mut b).await;
    // And it keeps holding (the report saw the leak 16 s later too).
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.exec(&format!("insert into late values (4, '{USER_A}', 'later', 's4')"))
        .await;
    pg.exec(&format!("insert into late values (5, '{USER_B}', 'marker', 's5')"))
        .await;
    assert_eq!(next_record(&mut b).await["id"], json!(5));
    assert_eq!(next_record(&mut a).await["id"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_policy_applies_to_the_next_change() {
    let (pg, s) = setup(
        "alter table public.late enable row level security; \
         create policy own on public.late for select to authenticated using (true);",
    )
    .await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    let mut b = viewer(&s, "authenticated", USER_B).await;
    both_see_first(&pg, &mut a, &mut b).await;
    pg.exec("alter policy own on public.late using (owner = auth.uid())")
        .await;
    only_owner_sees_second(&pg, &mut a, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_rls_on_the_owner_and_changing_the_owner_apply_at_once() {
    // `authenticated` owns the table: policies do not apply to it until forced.
    let (pg, s) = setup(&format!(
        "alter table public.late owner to authenticated; \
         alter table public.late enable row level security; {OWN_POLICY}"
    ))
    .await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    let mut b = viewer(&s, "authenticated", USER_B).await;
    both_see_first(&pg, &mut a, &mut b).await;
    pg.exec("alter table public.late force row level security").await;
    only_owner_sees_second(&pg, &mut a, &mut b).await;

    // Not forced again, but no longer the owner: policies apply.
    pg.exec("alter table public.late no force row level security; alter table public.late owner to postgres; grant select on public.late to authenticated")
        .await;
    pg.exec(&format!("insert into late values (4, '{USER_A}', 'x', 's4')"))
        .await;
    pg.exec(&format!("insert into late values (5, '{USER_B}', 'marker', 's5')"))
        .await;
    assert_eq!(next_record(&mut b).await["id"], json!(5));
    assert_eq!(next_record(&mut a).await["id"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_bypassrls_applies_to_the_next_change() {
    let (pg, s) = setup(&format!(
        "alter table public.late enable row level security; {OWN_POLICY}"
    ))
    .await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    let mut b = viewer(&s, "auditor", USER_B).await;
    both_see_first(&pg, &mut a, &mut b).await;
    pg.exec("alter role auditor nobypassrls").await;
    only_owner_sees_second(&pg, &mut a, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_column_hides_it_from_the_next_change() {
    let (pg, s) = setup("").await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    pg.exec(&format!(
        "insert into late values (1, '{USER_A}', 'b1', 'visible-secret')"
    ))
    .await;
    assert_eq!(next_record(&mut a).await["secret"], "visible-secret");
    pg.exec(
        "revoke select on public.late from authenticated; \
         grant select (id, owner, body) on public.late to authenticated",
    )
    .await;
    pg.exec(&format!(
        "insert into late values (2, '{USER_A}', 'b2', 'revoked-secret')"
    ))
    .await;
    let r = next_record(&mut a).await;
    assert_eq!(r["id"], json!(2), "{r}");
    assert_eq!(r["body"], "b2", "{r}");
    assert!(r.get("secret").is_none(), "a revoked column was sent: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_select_hides_the_next_change() {
    let (pg, s) = setup("").await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    pg.exec(&format!("insert into late values (1, '{USER_A}', 'b1', 's1')"))
        .await;
    assert_eq!(next_record(&mut a).await["id"], json!(1));
    pg.exec("revoke select on public.late from authenticated").await;
    pg.exec(&format!("insert into late values (2, '{USER_A}', 'b2', 's2')"))
        .await;
    // Supabase sends an `Error 401: Unauthorized` change with an empty record.
    let f = tokio::time::timeout(Duration::from_secs(10), a.recv_event("postgres_changes"))
        .await
        .expect("postgres_changes within 10 s");
    let data = &f.payload()["data"];
    assert_eq!(data["errors"], json!(["Error 401: Unauthorized"]), "{data}");
    assert_eq!(data["record"], json!({}), "{data}");
}

/// The reverse of the above (a newcomer saw `Error 401` for 10 s after a `GRANT` while
/// privileges were cached): a grant applies to the change committed right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granting_select_shows_the_next_change() {
    let (pg, s) = setup("revoke select on public.late from authenticated").await;
    let mut a = viewer(&s, "authenticated", USER_A).await;
    pg.exec(&format!("insert into late values (1, '{USER_A}', 'b1', 's1')"))
        .await;
    let f = tokio::time::timeout(Duration::from_secs(10), a.recv_event("postgres_changes"))
        .await
        .expect("postgres_changes within 10 s");
    assert_eq!(
        f.payload()["data"]["errors"],
        json!(["Error 401: Unauthorized"]),
        "{f:?}"
    );
    pg.exec("grant select on public.late to authenticated").await;
    pg.exec(&format!("insert into late values (2, '{USER_A}', 'b2', 's2')"))
        .await;
    let f = tokio::time::timeout(Duration::from_secs(10), a.recv_event("postgres_changes"))
        .await
        .expect("postgres_changes within 10 s");
    let data = &f.payload()["data"];
    assert!(data["errors"].is_null(), "still refused after the grant: {data}");
    assert_eq!(data["record"]["id"], json!(2), "{data}");
    assert_eq!(data["record"]["body"], "b2", "{data}");
}
