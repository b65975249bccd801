//! What the server says when a plain PostgreSQL lacks the Supabase-shaped pieces
//! Postgres Changes need: a missing role, a table outside the publication, `wal_level`
//! not `logical`. Supabase's own text comes first (clients compare it), then the hint.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

/// Joins `realtime:<table>` with one binding on `table` as `role` and returns the
/// channel's first `postgres_changes` system message.
async fn first_system(s: &Server, table: &str, role: &str) -> Value {
    let mut c = s.connect("1.0.0").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": table}]);
    let tok = claims_token(json!({"role": role, "exp": now() + 3600}));
    let (_, reply) = c
        .join_with(
            &format!("realtime:{table}"),
            config(json!({"postgres_changes": bindings})),
            Some(&tok),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = tokio::time::timeout(Duration::from_secs(15), c.recv_event("system"))
        .await
        .expect("a system message");
    sys.payload().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_role_and_an_unpublished_table_are_named_with_the_fix() {
    let pg = Pg::start();
    pg.exec(
        "create role authenticated nologin; grant usage on schema public to authenticated;
         create table public.published (id int primary key); grant select on public.published to authenticated;
         create table public.forgotten (id int primary key); grant select on public.forgotten to authenticated;
         create publication supabase_realtime for table public.published;",
    )
    .await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;

    // No `anon` role: Supabase's text, then what to create.
    let sys = first_system(&s, "published", "anon").await;
    assert_eq!(sys["status"], "error", "{sys}");
    let message = sys["message"].as_str().unwrap();
    assert!(
        message.starts_with("Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [event: *, schema: public, table: published, filters: [], select: nil]. Exception: ERROR 42704 (undefined_object) role \"anon\" does not exist"),
        "{message}"
    );
    assert!(message.contains("create role \"anon\" nologin"), "{message}");

    // A table that exists but is not published: how to add it.
    let sys = first_system(&s, "forgotten", "authenticated").await;
    assert_eq!(sys["status"], "error", "{sys}");
    let message = sys["message"].as_str().unwrap();
    assert!(
        message.starts_with("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: forgotten, filters: [], select: nil]"),
        "{message}"
    );
    assert!(
        message.contains("alter publication \"supabase_realtime\" add table \"public\".\"forgotten\""),
        "{message}"
    );

    // A published table subscribes as before.
    let sys = first_system(&s, "published", "authenticated").await;
    assert_eq!(sys["message"], "Subscribed to PostgreSQL", "{sys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_named_instead_of_silence() {
    let pg = Pg::start_with_wal_level("replica");
    pg.exec(
        "create role authenticated nologin; grant usage on schema public to authenticated;
         create table public.t (id int primary key); grant select on public.t to authenticated;
         create publication supabase_realtime for table public.t;",
    )
    .await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url()), ("REPLICATION_START_DELAY_MS", "0")]).await;
    let sys = first_system(&s, "t", "authenticated").await;
    assert_eq!(sys["status"], "error", "{sys}");
    let message = sys["message"].as_str().unwrap();
    assert!(message.contains("wal_level = replica"), "{message}");
    assert!(message.contains("wal_level = logical"), "{message}");
}
