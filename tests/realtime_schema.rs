//! The `realtime` schema against a real PostgreSQL 15 and the real binary: migrations (what
//! they create, idempotence, concurrency, the switch), grants per existing role, the SQL API
//! (`realtime.send`, `send_binary`, `broadcast_changes`, `topic()`), retention.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::Pg;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";

async fn server(pg: &Pg, extra: &[(&str, &str)]) -> Server {
    let url = pg.url();
    let mut env = vec![("DATABASE_URL", url.as_str())];
    env.extend_from_slice(extra);
    Server::start_with(&env).await
}

/// A connection whose NOTICE/WARNING messages are collected.
async fn client_with_notices(pg: &Pg) -> (tokio_postgres::Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notice(n) = msg {
                sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message()));
            }
        }
    });
    (client, notices)
}

async fn versions(c: &tokio_postgres::Client) -> Vec<(i32, String)> {
    c.query(
        "select version, applied_at::text from realtime.rs_schema_migrations order by version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &tokio_postgres::Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

async fn granted(c: &tokio_postgres::Client, role: &str) -> bool {
    c.query_one(
        "select has_schema_privilege($1, 'realtime', 'usage') \
           and has_table_privilege($1, 'realtime.messages', 'select') \
           and has_table_privilege($1, 'realtime.messages', 'insert') \
           and has_table_privilege($1, 'realtime.messages', 'update')",
        &[&role],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_create_everything_and_are_idempotent() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let mut s = server(&pg, &[]).await;
    let c = pg.client().await;

    let columns: Vec<(String, String, String, Option<String>)> = c
        .query(
            "select column_name::text, data_type::text, is_nullable::text, column_default::text \
             from information_schema.columns where table_schema = 'realtime' and table_name = 'messages' \
             order by column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let shape: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|(n, t, null, _)| (n.as_str(), t.as_str(), null.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("binary_payload", "bytea", "YES"),
            ("event", "text", "YES"),
            ("extension", "text", "NO"),
            ("id", "uuid", "NO"),
            ("inserted_at", "timestamp without time zone", "NO"),
            ("payload", "jsonb", "YES"),
            ("private", "boolean", "YES"),
            // realtime-rs: persisted client broadcasts (migration 5).
            ("rs_delivered_live", "boolean", "NO"),
            ("rs_expires_at", "timestamp without time zone", "YES"),
            ("topic", "text", "NO"),
            ("updated_at", "timestamp without time zone", "NO"),
        ]
    );
    let default = |name: &str| {
        columns
            .iter()
            .find(|c| c.0 == name)
            .and_then(|c| c.3.clone())
            .unwrap_or_default()
    };
    assert_eq!(default("private"), "true");
    assert_eq!(default("id"), "gen_random_uuid()");
    assert!(default("inserted_at").contains("now()"));

    assert!(
        scalar::<bool>(
            &c,
            "select relrowsecurity from pg_class where oid = 'realtime.messages'::regclass"
        )
        .await
    );
    assert!(
        !scalar::<bool>(
            &c,
            "select relispartition or relkind = 'p' from pg_class where oid = 'realtime.messages'::regclass"
        )
        .await
    );
    let pk: String = scalar(
        &c,
        "select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'realtime.messages'::regclass and contype = 'p'",
    )
    .await;
    assert_eq!(pk, "PRIMARY KEY (id)");
    let index: bool = scalar(
        &c,
        "select exists (select 1 from pg_indexes where schemaname = 'realtime' and tablename = 'messages' \
         and indexdef like '%(topic, inserted_at)%')",
    )
    .await;
    assert!(index, "index on (topic, inserted_at)");
    for f in [
        "realtime.topic()",
        "realtime.send(jsonb, text, text, boolean)",
        "realtime.send_binary(bytea, text, text, boolean)",
        "realtime.broadcast_changes(text, text, text, text, text, record, record, text)",
    ] {
        let exists: bool = c
            .query_one("select to_regprocedure($1) is not null", &[&f])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{f}");
    }
    let args: String = scalar(
        &c,
        "select pg_get_function_arguments('realtime.send(jsonb,text,text,boolean)'::regprocedure)",
    )
    .await;
    assert_eq!(
        args,
        "payload jsonb, event text, topic text, private boolean DEFAULT true"
    );
    let args: String = scalar(
        &c,
        "select pg_get_function_arguments('realtime.broadcast_changes(text,text,text,text,text,record,record,text)'::regprocedure)",
    )
    .await;
    assert_eq!(
        args,
        "topic_name text, event_name text, operation text, table_name text, table_schema text, new record, old record, level text DEFAULT 'ROW'::text"
    );
    assert_eq!(
        scalar::<String>(
            &c,
            "select provolatile::text from pg_proc where oid = 'realtime.topic()'::regprocedure"
        )
        .await,
        "s",
        "topic() is stable"
    );
    let publication: (bool, bool, bool, bool) = {
        let r = c
            .query_one(
                "select pubinsert, pubupdate, pubdelete, pubtruncate from pg_publication \
                 where pubname = 'supabase_realtime_messages_publication'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(publication, (true, false, false, false), "inserts only");
    let tables: Vec<String> = c
        .query(
            "select schemaname || '.' || tablename from pg_publication_tables where pubname = 'supabase_realtime_messages_publication'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec!["realtime.messages".to_owned()]);
    for role in ["anon", "authenticated", "service_role"] {
        assert!(granted(&c, role).await, "{role}");
    }

    let first = versions(&c).await;
    assert_eq!(first.iter().map(|v| v.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // Second start on the same database: nothing is applied again.
    s.kill();
    let _s = server(&pg, &[]).await;
    assert_eq!(versions(&c).await, first, "each version once, applied_at unchanged");
    assert_eq!(
        scalar::<i64>(
            &c,
            "select count(*) from pg_publication where pubname = 'supabase_realtime_messages_publication'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_together_migrate_once() {
    let pg = Pg::start();
    let (a, b) = tokio::join!(
        server(&pg, &[("MESSAGES_SLOT_NAME", "slot_a"), ("SLOT_NAME", "pc_a")]),
        server(&pg, &[("MESSAGES_SLOT_NAME", "slot_b"), ("SLOT_NAME", "pc_b")])
    );
    let c = pg.client().await;
    assert_eq!(
        versions(&c).await.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_skip_missing_roles_and_follow_new_ones() {
    let pg = Pg::start();
    // Plain Postgres: only service_role exists.
    pg.exec("create role service_role nologin").await;
    let mut s = server(&pg, &[]).await;
    let c = pg.client().await;
    assert!(granted(&c, "service_role").await);
    let missing: i64 = scalar(
        &c,
        "select count(*) from pg_roles where rolname in ('anon', 'authenticated')",
    )
    .await;
    assert_eq!(missing, 0);
    assert_eq!(versions(&c).await.len(), 5, "migrations complete without those roles");

    // Roles created later get their grants at the next start.
    pg.exec("create role anon nologin; create role authenticated nologin")
        .await;
    assert!(!granted(&c, "anon").await);
    s.kill();
    let _s = server(&pg, &[]).await;
    assert!(granted(&c, "anon").await);
    assert!(granted(&c, "authenticated").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_can_be_disabled() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let s = server(&pg, &[("REALTIME_MIGRATIONS", "false")]).await;
    let c = pg.client().await;
    assert!(scalar::<bool>(&c, "select to_regnamespace('realtime') is null").await);
    assert!(
        scalar::<bool>(
            &c,
            "select not exists (select 1 from pg_publication where pubname = 'supabase_realtime_messages_publication')"
        )
        .await
    );
    // The server still serves Broadcast.
    let mut ws = s.connect("2.0.0").await;
    ws.join("realtime:room", config(json!({}))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_adds_an_id_and_never_aborts_the_caller() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let _s = server(&pg, &[]).await;
    let (c, notices) = client_with_notices(&pg).await;
    c.batch_execute("create table public.log (n int)").await.unwrap();

    c.batch_execute("select realtime.send('{\"v\": 1}', 'ev', 'room', false)")
        .await
        .unwrap();
    let r = c
        .query_one(
            "select id::text, payload::text, event, topic, private, extension, binary_payload is null \
             from realtime.messages",
            &[],
        )
        .await
        .unwrap();
    let id: String = r.get(0);
    let payload: Value = serde_json::from_str(r.get(1)).unwrap();
    assert_eq!(payload, json!({"v": 1, "id": id}), "the row id is added to the payload");
    assert_eq!(r.get::<_, String>(2), "ev");
    assert_eq!(r.get::<_, String>(3), "room");
    assert!(!r.get::<_, bool>(4));
    assert_eq!(r.get::<_, String>(5), "broadcast");
    assert!(r.get::<_, bool>(6));
    c.batch_execute("delete from realtime.messages").await.unwrap();

    // An id already present is kept; private defaults to true.
    c.batch_execute("select realtime.send('{\"id\": \"mine\"}', 'ev', 'room')")
        .await
        .unwrap();
    let r = c
        .query_one("select payload::text, private from realtime.messages", &[])
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(r.get(0)).unwrap(), json!({"id": "mine"}));
    assert!(r.get::<_, bool>(1));
    c.batch_execute("delete from realtime.messages").await.unwrap();

    // A NULL topic fails the insert: a warning, and the caller's transaction commits.
    c.batch_execute(
        "begin; insert into public.log values (1); select realtime.send('{}', 'ev', null, false); \
         insert into public.log values (2); commit;",
    )
    .await
    .unwrap();
    assert_eq!(scalar::<i64>(&c, "select count(*) from public.log").await, 2);
    assert_eq!(scalar::<i64>(&c, "select count(*) from realtime.messages").await, 0);
    let warnings = notices.lock().unwrap().clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("WARNING: WarnSendingBroadcastMessage:") && w.contains("topic")),
        "{warnings:?}"
    );

    // send_binary stores bytes, no JSON.
    c.batch_execute("select realtime.send_binary('\\x0102ff'::bytea, 'bin', 'room', false)")
        .await
        .unwrap();
    let r = c
        .query_one(
            "select binary_payload, payload is null, event from realtime.messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, Vec<u8>>(0), vec![1, 2, 255]);
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, String>(2), "bin");

    // JSON and bytes together are refused by the table.
    let both = c
        .batch_execute("insert into realtime.messages (topic, extension, payload, binary_payload) values ('t', 'broadcast', '{}', '\\x00')")
        .await;
    assert!(both.is_err());
    let bad_ext = c
        .batch_execute("insert into realtime.messages (topic, extension) values ('t', 'other')")
        .await;
    assert!(bad_ext.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_sets_the_topic_for_insert_policies() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let _s = server(&pg, &[]).await;
    pg.exec(
        "create policy only_allowed on realtime.messages for insert to authenticated \
           with check (realtime.topic() = 'allowed' and extension = 'broadcast')",
    )
    .await;
    let (c, notices) = client_with_notices(&pg).await;
    assert!(scalar::<Option<String>>(&c, "select realtime.topic()").await.is_none());
    c.batch_execute(
        "begin; set local role authenticated; \
         select realtime.send('{\"a\": 1}', 'ev', 'allowed'); \
         select realtime.send('{\"a\": 2}', 'ev', 'denied'); commit;",
    )
    .await
    .unwrap();
    let topics: Vec<String> = c
        .query("select topic from realtime.messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(topics, vec!["allowed".to_owned()]);
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("WarnSendingBroadcastMessage") && w.contains("row-level security")),
        "{:?}",
        notices.lock().unwrap()
    );
    // topic() reads the setting the server uses for authorization.
    let t: Option<String> = c
        .query_one(
            "select realtime.topic() from (select set_config('realtime.topic', 'room-1', false)) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(t.as_deref(), Some("room-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_changes_from_a_trigger() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let _s = server(&pg, &[]).await;
    pg.exec(
        "create table public.items (id int primary key, name text);
         create function public.items_changed() returns trigger language plpgsql security definer as $$
         begin
           perform realtime.broadcast_changes('items:' || coalesce(new.id, old.id), tg_op, tg_op,
             tg_table_name, tg_table_schema, new, old);
           return null;
         end $$;
         create trigger items_changed after insert or update or delete on public.items
           for each row execute function public.items_changed();",
    )
    .await;
    pg.exec("insert into items values (1, 'a')").await;
    pg.exec("update items set name = 'b' where id = 1").await;
    pg.exec("delete from items where id = 1").await;
    let c = pg.client().await;
    let rows = c
        .query(
            "select id::text, topic, event, private, payload::text from realtime.messages order by inserted_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let expected = [
        ("INSERT", Value::Null, json!({"id": 1, "name": "a"})),
        ("UPDATE", json!({"id": 1, "name": "a"}), json!({"id": 1, "name": "b"})),
        ("DELETE", json!({"id": 1, "name": "b"}), Value::Null),
    ];
    for (row, (op, old, new)) in rows.iter().zip(expected) {
        let id: String = row.get(0);
        assert_eq!(row.get::<_, String>(1), "items:1");
        assert_eq!(row.get::<_, String>(2), op);
        assert!(row.get::<_, bool>(3), "broadcast_changes sends on a private topic");
        assert_eq!(
            serde_json::from_str::<Value>(row.get(4)).unwrap(),
            json!({"id": id, "old_record": old, "record": new, "operation": op, "table": "items", "schema": "public"})
        );
    }

    // A statement-level trigger is refused.
    pg.exec(
        "create table public.bulk (id int);
         create function public.bulk_changed() returns trigger language plpgsql as $$
         begin
           perform realtime.broadcast_changes('bulk', tg_op, tg_op, tg_table_name, tg_table_schema, new, old, tg_level);
           return null;
         end $$;
         create trigger bulk_changed after insert on public.bulk
           for each statement execute function public.bulk_changed();",
    )
    .await;
    let err = c.batch_execute("insert into bulk values (1)").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("FOR EACH ROW"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let _s = server(&pg, &[("MESSAGES_RETENTION_INTERVAL_SECS", "1")]).await;
    let c = pg.client().await;
    c.batch_execute(
        "insert into realtime.messages (topic, extension, payload, inserted_at) values \
           ('old', 'broadcast', '{}', timezone('utc', now()) - interval '73 hours'), \
           ('older', 'presence', '{}', timezone('utc', now()) - interval '30 days'), \
           ('recent', 'broadcast', '{}', timezone('utc', now()) - interval '71 hours'); \
         select realtime.send('{}', 'ev', 'new');",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = c
            .query("select topic from realtime.messages order by topic", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left == ["new", "recent"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "old rows not deleted: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
