//! Postgres Changes against a real PostgreSQL 15 and the real binary: payload shapes,
//! typed values, filters, RLS per user, isolation of a raising policy, big transactions,
//! restarts of the server and of Postgres.

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
grant usage on schema public to anon, authenticated, service_role;
create table public.todos (
  id bigserial primary key, title text, done boolean default false, owner uuid, meta jsonb, tags text[],
  amount numeric, big bigint, day date, at timestamptz, local_at timestamp, data bytea, score float8);
grant select on public.todos to anon, authenticated, service_role;
create table public.full_todos (id int primary key, title text, body text);
alter table public.full_todos replica identity full;
grant select on public.full_todos to anon, authenticated;
create table public.notes (id bigint primary key, owner uuid not null, body text);
alter table public.notes enable row level security;
create policy own on public.notes for select to authenticated
  using (owner = (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')::uuid);
grant select on public.notes to anon, authenticated;
create table public.secret (id int primary key, visible text, hidden text);
grant select (id, visible) on public.secret to authenticated;
create table public.nopk (a int, b text);
grant select on public.nopk to authenticated;
create publication supabase_realtime for table public.todos, public.full_todos, public.notes, public.secret, public.nopk;
"#;

fn user(sub: &str) -> String {
    claims_token(json!({"role": "authenticated", "sub": sub, "exp": now() + 3600}))
}

async fn setup() -> (Pg, Server) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let server = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    (pg, server)
}

/// Joins with postgres_changes bindings and waits for `Subscribed to PostgreSQL`;
/// returns the reply ids in binding order.
async fn subscribe(c: &mut Client, topic: &str, bindings: Value, token: Option<&str>) -> Vec<u64> {
    let (_, reply) = c
        .join_with(topic, config(json!({"postgres_changes": bindings})), token)
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let ids = reply.payload()["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    let sys = tokio::time::timeout(Duration::from_secs(10), c.recv_event("system"))
        .await
        .expect("system message");
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL", "{sys:?}");
    assert_eq!(sys.payload()["status"], "ok");
    ids
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn sorted_ids(p: &Value) -> Vec<u64> {
    sorted(
        p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect(),
    )
}

async fn change(c: &mut Client) -> Value {
    let f = tokio::time::timeout(Duration::from_secs(10), c.recv_event("postgres_changes"))
        .await
        .expect("postgres_changes within 10 s");
    f.payload().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_shapes_and_types() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    let ids = subscribe(
        &mut c,
        "realtime:todos",
        json!([{"event": "*", "schema": "public", "table": "todos"}]),
        None,
    )
    .await;

    pg.exec(
        r#"insert into todos (title, done, owner, meta, tags, amount, big, day, at, local_at, data, score)
           values ('a "quoted" title', true, '11111111-1111-1111-1111-111111111111', '{"k": [1, {"x": null}]}',
                   '{"x y","z\"q",NULL}', 12.50, 9007199254740993, '2025-11-03', '2025-11-03 09:32:55.123+00',
                   '2025-11-03 09:32:55.123', '\x0102ff', 1.5)"#,
    )
    .await;
    let p = change(&mut c).await;
    assert_eq!(p["ids"], json!(ids));
    let d = &p["data"];
    assert_eq!(
        (d["schema"].as_str(), d["table"].as_str(), d["type"].as_str()),
        (Some("public"), Some("todos"), Some("INSERT"))
    );
    assert_eq!(d["errors"], Value::Null);
    assert!(d.get("old_record").is_none());
    let ts = d["commit_timestamp"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    let types: Vec<(String, String)> = d["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["type"].as_str().unwrap().into()))
        .collect();
    assert_eq!(types[0], ("id".into(), "int8".into()));
    assert!(types.contains(&("tags".into(), "_text".into())) && types.contains(&("at".into(), "timestamptz".into())));
    let r = &d["record"];
    assert_eq!(r["id"], json!(1));
    assert_eq!(r["title"], "a \"quoted\" title");
    assert_eq!(r["done"], true);
    assert_eq!(r["owner"], USER_A);
    assert_eq!(r["meta"], json!({"k": [1, {"x": null}]}));
    assert_eq!(r["tags"], json!(["x y", "z\"q", null]));
    assert_eq!(r["amount"], json!(12.50));
    assert!(
        p.to_string().contains("\"big\":9007199254740993"),
        "int8 stays exact: {p}"
    );
    assert_eq!(r["day"], "2025-11-03");
    assert_eq!(r["at"], "2025-11-03T09:32:55.123+00:00");
    assert_eq!(r["local_at"], "2025-11-03T09:32:55.123");
    // Supabase sends a bytea column as its hex digits without `\x` (wal/src/value.rs).
    assert_eq!(r["data"], "0102ff");
    assert_eq!(r["score"], json!(1.5));

    pg.exec("update todos set done = false where id = 1").await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["type"], "UPDATE");
    assert_eq!(d["old_record"], json!({"id": 1}), "default identity: primary key only");
    assert_eq!(d["record"]["done"], false);

    pg.exec("delete from todos where id = 1").await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["type"], "DELETE");
    assert!(d.get("record").is_none());
    assert_eq!(d["old_record"], json!({"id": 1}));

    // TRUNCATE is not delivered.
    pg.exec("insert into todos (title) values ('t'); truncate todos; insert into todos (title) values ('after')")
        .await;
    assert_eq!(change(&mut c).await["data"]["record"]["title"], "t");
    assert_eq!(change(&mut c).await["data"]["record"]["title"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_and_toast() {
    let (pg, s) = setup().await;
    let mut c = s.connect("1.0.0").await;
    subscribe(
        &mut c,
        "realtime:full",
        json!([{"event": "*", "schema": "public", "table": "full_todos"}]),
        None,
    )
    .await;
    let big: String = (0..20000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    pg.exec(&format!("insert into full_todos values (1, 'x', '{big}')"))
        .await;
    assert_eq!(
        change(&mut c).await["data"]["record"]["body"].as_str().map(str::len),
        Some(20000)
    );
    pg.exec("update full_todos set title = 'y' where id = 1").await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["old_record"]["title"], "x", "FULL identity: whole old row");
    assert_eq!(d["record"]["title"], "y");
    assert_eq!(
        d["record"]["body"].as_str().map(str::len),
        Some(20000),
        "unchanged TOAST filled from the old image"
    );
    pg.exec("delete from full_todos where id = 1").await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["old_record"]["title"], "y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_events() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    let bindings = json!([
        {"event": "INSERT", "schema": "public", "table": "todos", "filter": "title=eq.match"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "amount=in.(1,2.5)"},
        {"event": "UPDATE", "schema": "public", "table": "todos", "filter": "title=like.up%"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "big=gt.100,big=lte.200"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "title=not.in.(a,b,match,up1,zz,\"x,y\")"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "done=is.true"},
        {"event": "*", "schema": "public", "table": "todos", "filter": "title=imatch.^Z+$"},
        {"event": "DELETE", "schema": "public", "table": "todos", "filter": "id=eq.3"}
    ]);
    let ids = subscribe(&mut c, "realtime:f", bindings, None).await;
    pg.exec("insert into todos (id, title, amount, big, done) values (1, 'match', 2.50, 150, false)")
        .await;
    assert_eq!(
        sorted_ids(&change(&mut c).await),
        sorted(vec![ids[0], ids[1], ids[3]]),
        "eq + in (2.50 = 2.5) + range"
    );
    pg.exec("insert into todos (id, title, done) values (2, 'zz', true)")
        .await;
    assert_eq!(
        sorted_ids(&change(&mut c).await),
        sorted(vec![ids[5], ids[6]]),
        "is.true and imatch"
    );
    pg.exec("insert into todos (id, title) values (3, 'other')").await;
    assert_eq!(
        change(&mut c).await["ids"],
        json!([ids[4]]),
        "not.in with a quoted element"
    );
    pg.exec("update todos set title = 'up1' where id = 3").await;
    assert_eq!(change(&mut c).await["ids"], json!([ids[2]]), "like on UPDATE only");
    pg.exec("delete from todos where id = 3").await;
    // DELETE filters see only the identity (id): the id=eq.3 binding matches; title is
    // not in the old image so the not.in binding does not.
    assert_eq!(change(&mut c).await["ids"], json!([ids[7]]));
    pg.exec("insert into todos (id, title) values (4, 'a')").await;
    c.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_errors_use_supabase_texts() {
    let (_pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    let cases = [
        (json!({"event": "*", "schema": "public", "table": "doesnotexist"}), "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: doesnotexist, filters: [], select: nil]"),
        (json!({"event": "*", "schema": "public", "table": "todos", "filter": "wrong"}), "Error parsing `filter` params: [\"wrong\"]"),
        (json!({"event": "*", "schema": "public", "table": "todos", "filter": "notacolumn=eq.123"}), "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [event: *, schema: public, table: todos, filters: [{\"notacolumn\", \"eq\", \"123\", false}], select: nil]. Exception: ERROR P0001 (raise_exception) invalid column for filter notacolumn"),
    ];
    for (i, (binding, message)) in cases.into_iter().enumerate() {
        let topic = format!("realtime:e{i}");
        let (_, reply) = c
            .join_with(&topic, config(json!({"postgres_changes": [binding]})), None)
            .await;
        assert_eq!(reply.payload()["status"], "ok");
        let sys = c.recv_event("system").await;
        assert_eq!(
            sys.payload(),
            &json!({"channel": format!("e{i}"), "extension": "postgres_changes", "message": message, "status": "error"})
        );
    }
    let (_, reply) = c.join_with("realtime:cast", config(json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.abc"}]})), None).await;
    assert_eq!(reply.payload()["status"], "ok");
    let msg = c.recv_event("system").await.payload()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("Exception: ERROR 22P02 (invalid_text_representation) invalid input syntax for type bigint"),
        "{msg}"
    );
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let (_, _) = c.join_with("realtime:many", config(json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "todos", "filter": format!("id=in.({})", many.join(","))}]})), None).await;
    let msg = c.recv_event("system").await.payload()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.ends_with("ERROR P0001 (raise_exception) too many values for `in` filter. Maximum 100"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_per_user_and_column_privileges() {
    let (pg, s) = setup().await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let mut anon = s.connect("2.0.0").await;
    let binding = json!([{"event": "*", "schema": "public", "table": "notes"}]);
    subscribe(&mut a, "realtime:notes", binding.clone(), Some(&user(USER_A))).await;
    subscribe(&mut b, "realtime:notes", binding.clone(), Some(&user(USER_B))).await;
    subscribe(&mut anon, "realtime:notes", binding, None).await;

    pg.exec(&format!(
        "insert into notes values (1, '{USER_A}', 'for a'), (2, '{USER_B}', 'for b')"
    ))
    .await;
    assert_eq!(change(&mut a).await["data"]["record"]["body"], "for a");
    assert_eq!(change(&mut b).await["data"]["record"]["body"], "for b");
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect_silence(Duration::from_millis(300)).await;
    anon.expect_silence(Duration::from_millis(300)).await;

    // DELETE is not RLS-checked (as in Supabase) but old_record is cut to the key.
    pg.exec("delete from notes where id = 1").await;
    assert_eq!(change(&mut a).await["data"]["old_record"], json!({"id": 1}));
    assert_eq!(change(&mut b).await["data"]["old_record"], json!({"id": 1}));

    // Column privileges limit columns and record.
    let mut c = s.connect("2.0.0").await;
    subscribe(
        &mut c,
        "realtime:secret",
        json!([{"event": "*", "schema": "public", "table": "secret"}]),
        Some(&user(USER_A)),
    )
    .await;
    pg.exec("insert into secret values (1, 'shown', 'hidden')").await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["record"], json!({"id": 1, "visible": "shown"}));
    assert_eq!(d["columns"].as_array().unwrap().len(), 2);

    // A table without a primary key yields Supabase's error row.
    let mut n = s.connect("2.0.0").await;
    subscribe(
        &mut n,
        "realtime:nopk",
        json!([{"event": "INSERT", "schema": "public", "table": "nopk"}]),
        Some(&user(USER_A)),
    )
    .await;
    pg.exec("insert into nopk values (1, 'x')").await;
    let d = change(&mut n).await["data"].clone();
    assert_eq!(d["errors"], json!(["Error 400: Bad Request, no primary key"]));
    assert_eq!(d["record"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_policy_affects_only_its_subscriber() {
    let (pg, s) = setup().await;
    pg.exec(
        "create table public.fragile (id int primary key, owner uuid);
         alter table fragile enable row level security;
         create policy p on fragile for select to authenticated
           using (owner = (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')::uuid);
         grant select on fragile to authenticated;
         alter publication supabase_realtime add table fragile;",
    )
    .await;
    let mut good = s.connect("2.0.0").await;
    let mut bad = s.connect("2.0.0").await;
    let binding = json!([{"event": "*", "schema": "public", "table": "fragile"}]);
    subscribe(&mut good, "realtime:fr", binding.clone(), Some(&user(USER_A))).await;
    // `sub` that is not a uuid makes the policy raise for this subscriber only.
    subscribe(&mut bad, "realtime:fr", binding, Some(&user("not-a-uuid"))).await;
    pg.exec(&format!("insert into fragile values (1, '{USER_A}')")).await;
    pg.exec(&format!("insert into fragile values (2, '{USER_A}')")).await;
    assert_eq!(change(&mut good).await["data"]["record"]["id"], 1);
    assert_eq!(change(&mut good).await["data"]["record"]["id"], 2);
    bad.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_row_transaction_in_order() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    subscribe(
        &mut c,
        "realtime:bulk",
        json!([{"event": "INSERT", "schema": "public", "table": "todos"}]),
        None,
    )
    .await;
    pg.exec("insert into todos (id, title) select g, 'row ' || g from generate_series(1, 1000) g")
        .await;
    for i in 1..=1000 {
        assert_eq!(change(&mut c).await["data"]["record"]["id"], json!(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_and_duplicates_nothing() {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let env = [("DATABASE_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut s = Server::start_with(&env).await;
    let mut c = s.connect("2.0.0").await;
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "todos"}]);
    subscribe(&mut c, "realtime:r", binding.clone(), None).await;
    pg.exec("insert into todos (id, title) values (1, 'before')").await;
    assert_eq!(change(&mut c).await["data"]["record"]["id"], 1);
    s.kill();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.exec("insert into todos (id, title) values (2, 'while down'), (3, 'while down')")
        .await;

    // The restarted server waits before streaming so that this client can rejoin first,
    // as real clients do (they reconnect within seconds).
    let mut env2 = env.clone();
    env2.push(("REPLICATION_START_DELAY_MS", "2000"));
    let s2 = Server::start_with(&env2).await;
    let mut c = s2.connect("2.0.0").await;
    // The backlog may arrive before or after `Subscribed to PostgreSQL`: take all frames.
    let (_, reply) = c
        .join_with("realtime:r", config(json!({"postgres_changes": binding})), None)
        .await;
    assert_eq!(reply.payload()["status"], "ok");
    let mut seen = Vec::new();
    let mut subscribed = false;
    while seen.len() < 2 || !subscribed {
        let f = tokio::time::timeout(Duration::from_secs(10), c.recv())
            .await
            .expect("backlog and subscription");
        match f.event() {
            "system" => subscribed = f.payload()["message"] == "Subscribed to PostgreSQL",
            "postgres_changes" => seen.push(f.payload()["data"]["record"]["id"].as_u64().unwrap()),
            other => panic!("unexpected {other}: {f:?}"),
        }
    }
    pg.exec("insert into todos (id, title) values (4, 'after')").await;
    seen.push(change(&mut c).await["data"]["record"]["id"].as_u64().unwrap());
    assert_eq!(
        seen,
        vec![2, 3, 4],
        "what was committed while down arrives once, in order; 1 is not repeated"
    );
    c.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_recovers() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    subscribe(
        &mut c,
        "realtime:pgr",
        json!([{"event": "INSERT", "schema": "public", "table": "todos"}]),
        None,
    )
    .await;
    pg.stop();
    let sys = tokio::time::timeout(Duration::from_secs(10), c.recv_event("system"))
        .await
        .expect("told the database is gone");
    assert_eq!(sys.payload()["status"], "error");
    assert_eq!(
        sys.payload()["message"],
        "Realtime was unable to connect to the project database"
    );
    pg.start_again();
    let sys = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let f = c.recv_event("system").await;
            if f.payload()["status"] == "ok" {
                return f;
            }
        }
    })
    .await
    .expect("subscribed again");
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL");
    pg.exec("insert into todos (id, title) values (7, 'back')").await;
    assert_eq!(change(&mut c).await["data"]["record"]["id"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_is_followed() {
    let (pg, s) = setup().await;
    let mut c = s.connect("2.0.0").await;
    subscribe(
        &mut c,
        "realtime:alter",
        json!([{"event": "INSERT", "schema": "public", "table": "todos", "filter": "title=eq.keep"}]),
        None,
    )
    .await;
    pg.exec("insert into todos (id, title) values (1, 'keep')").await;
    assert_eq!(change(&mut c).await["data"]["record"]["id"], 1);
    pg.exec("alter table todos drop column meta; alter table todos add column extra int default 7")
        .await;
    pg.exec("insert into todos (id, title) values (2, 'keep'), (3, 'drop')")
        .await;
    let d = change(&mut c).await["data"].clone();
    assert_eq!(d["record"]["id"], 2);
    assert_eq!(d["record"]["extra"], 7);
    assert!(d["record"].get("meta").is_none());
    // Row 3 does not pass the filter; the only other frame is the re-subscription notice.
    while let Some(f) = c.recv_within(Duration::from_millis(500)).await {
        assert_eq!(f.event(), "system", "{f:?}");
        assert_eq!(f.payload()["message"], "Subscribed to PostgreSQL");
    }
}

/// `POSTGRES_CHANGES_RLS_BATCH=false` checks every (subscriber, row) pair on its own: the
/// answers must be those of the batched check, also for rows that share a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbatched_rls_gives_the_same_answers() {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url()), ("POSTGRES_CHANGES_RLS_BATCH", "false")]).await;
    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("1.0.0").await;
    let mut anon = s.connect("2.0.0").await;
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "notes"}]);
    subscribe(&mut a, "realtime:notes", binding.clone(), Some(&user(USER_A))).await;
    subscribe(&mut b, "realtime:notes", binding.clone(), Some(&user(USER_B))).await;
    subscribe(&mut anon, "realtime:notes", binding, None).await;
    // One transaction: its rows are checked in one round.
    pg.exec(&format!(
        "insert into notes values (1, '{USER_A}', 'a1'), (2, '{USER_B}', 'b1'), (3, '{USER_B}', 'b2'), (4, '{USER_A}', 'a2')"
    ))
    .await;
    for want in ["a1", "a2"] {
        assert_eq!(change(&mut a).await["data"]["record"]["body"], want);
    }
    for want in ["b1", "b2"] {
        assert_eq!(change(&mut b).await["data"]["record"]["body"], want);
    }
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect_silence(Duration::from_millis(300)).await;
    anon.expect_silence(Duration::from_millis(300)).await;
}

/// With one pooled connection every viewer of a round is checked by one statement (the
/// per-table PL/pgSQL function): users of several groups and roles, a composite key, and
/// columns named like the function's own parameters, each subscriber gets exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_checks_many_viewers_of_mixed_roles() {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    pg.exec(
        "create table public.grouped (grp int, n int, keys text, v int, counts int, primary key (grp, n));
         alter table public.grouped enable row level security;
         create policy by_group on public.grouped for select to authenticated
           using (grp = (current_setting('request.jwt.claims', true)::jsonb ->> 'grp')::int);
         create policy public_rows on public.grouped for select to anon using (grp = 0);
         grant select on public.grouped to anon, authenticated;
         alter publication supabase_realtime add table public.grouped;",
    )
    .await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url()), ("DB_POOL_SIZE", "1")]).await;
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "grouped"}]);
    // Six users in groups 1..=3 (two each) and two anonymous subscribers (group 0).
    let mut members = Vec::new();
    for i in 0..8 {
        let grp = if i < 6 { i / 2 + 1 } else { 0 };
        let token = (grp > 0).then(|| {
            claims_token(json!({"role": "authenticated", "sub": format!("u{i}"), "grp": grp, "exp": now() + 3600}))
        });
        let mut c = s.connect("2.0.0").await;
        subscribe(&mut c, "realtime:grouped", binding.clone(), token.as_deref()).await;
        members.push((grp, c));
    }
    // One transaction: one round, all eight viewers in one call.
    pg.exec(
        "insert into public.grouped (grp, n, keys, v, counts)
         select g, n, 'k', 1, 1 from generate_series(0, 3) g, generate_series(1, 2) n",
    )
    .await;
    for (grp, c) in &mut members {
        for want in 1..=2 {
            let record = change(c).await["data"]["record"].clone();
            assert_eq!(
                (record["grp"].clone(), record["n"].clone()),
                (json!(*grp), json!(want)),
                "group {grp}"
            );
        }
        c.expect_silence(Duration::from_millis(300)).await;
    }
}
