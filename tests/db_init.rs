//! `realtime db init` on a plain PostgreSQL: creates the Supabase-shaped roles and
//! `auth.*` helpers that are missing, leaves existing ones exactly as they were, and is
//! idempotent.

#![allow(clippy::unwrap_used)]

mod common;

use common::pg::Pg;

async fn db_init(url: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env_clear()
        .env("DATABASE_URL", url)
        .args(["db", "init"])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn db_init_creates_what_is_missing_and_leaves_the_rest_alone() {
    let pg = Pg::start();
    // A role and a helper that exist already, shaped differently from ours.
    pg.exec(
        "create role anon nologin bypassrls;
         create schema auth;
         create function auth.uid() returns uuid language sql stable
           as $$ select '11111111-1111-1111-1111-111111111111'::uuid $$;",
    )
    .await;

    let (ok, out, err) = db_init(&pg.url()).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "role anon: already present, left as it is",
            "role authenticated: created",
            "role service_role: created",
            "schema auth: already present, left as it is",
            "function auth.uid(): already present, left as it is",
            "function auth.role(): created",
            "function auth.jwt(): created",
        ]
    );

    let db = pg.client().await;
    let anon: bool = db
        .query_one("select rolbypassrls from pg_roles where rolname = 'anon'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(anon, "the existing anon role keeps its attributes");
    let service: bool = db
        .query_one("select rolbypassrls from pg_roles where rolname = 'service_role'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(service, "service_role bypasses RLS, as on Supabase");
    db.batch_execute("begin; select set_config('request.jwt.claims', '{\"sub\":\"22222222-2222-2222-2222-222222222222\",\"role\":\"authenticated\"}', true)")
        .await
        .unwrap();
    let row = db
        .query_one("select auth.uid()::text, auth.role(), auth.jwt() ->> 'sub'", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "11111111-1111-1111-1111-111111111111",
        "auth.uid() untouched"
    );
    assert_eq!(row.get::<_, String>(1), "authenticated");
    assert_eq!(row.get::<_, String>(2), "22222222-2222-2222-2222-222222222222");
    db.batch_execute("rollback").await.unwrap();
    // The roles may use the schemas (policies call auth.uid() as the subscriber).
    let usage: bool = db
        .query_one("select has_schema_privilege('authenticated', 'auth', 'usage') and has_schema_privilege('anon', 'public', 'usage')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(usage);

    let (ok, out, err) = db_init(&pg.url()).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().all(|l| l.ends_with("already present, left as it is")),
        "a second run changes nothing: {out}"
    );
}

#[tokio::test]
async fn db_init_without_a_database_url_says_so() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env_clear()
        .args(["db", "init"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}
