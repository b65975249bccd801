//! `realtime db init`: gives a plain PostgreSQL what Supabase's has for Postgres Changes
//! with RLS (the `anon`/`authenticated`/`service_role` roles and the `auth.uid()`,
//! `auth.role()`, `auth.jwt()` helpers; `src/dev/roles.sql`). Opt-in, and additive: what
//! already exists is left as it is, so it is safe on a Supabase database too.

use clap::Subcommand;

/// `realtime db <command>`
#[derive(Debug, Clone, Subcommand)]
pub enum DbCommand {
    /// Create the Supabase-shaped roles and auth.* helpers in DATABASE_URL where absent
    /// (and grant the roles USAGE on schemas public and auth); prints what it created.
    Init,
}

// CASE: to_regprocedure may raise when the schema itself is missing.
const REGPROC_UID: &str = "select case when exists (select from pg_namespace where nspname = 'auth') \
                           then to_regprocedure('auth.uid()') is not null else false end";
const REGPROC_ROLE: &str = "select case when exists (select from pg_namespace where nspname = 'auth') \
                            then to_regprocedure('auth.role()') is not null else false end";
const REGPROC_JWT: &str = "select case when exists (select from pg_namespace where nspname = 'auth') \
                           then to_regprocedure('auth.jwt()') is not null else false end";

/// The objects `roles.sql` creates, each with a query that is true when it exists.
const OBJECTS: &[(&str, &str)] = &[
    (
        "role anon",
        "select exists (select from pg_roles where rolname = 'anon')",
    ),
    (
        "role authenticated",
        "select exists (select from pg_roles where rolname = 'authenticated')",
    ),
    (
        "role service_role",
        "select exists (select from pg_roles where rolname = 'service_role')",
    ),
    (
        "schema auth",
        "select exists (select from pg_namespace where nspname = 'auth')",
    ),
    ("function auth.uid()", REGPROC_UID),
    ("function auth.role()", REGPROC_ROLE),
    ("function auth.jwt()", REGPROC_JWT),
];

/// Runs `realtime db init` against `url`; prints one line per object on stdout.
pub async fn init(url: Option<&str>) -> Result<(), String> {
    let url = url.ok_or("set DATABASE_URL (or --database-url) to the database to initialise")?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    let task = tokio::spawn(connection);
    let before = exists(&client).await?;
    client
        .batch_execute(crate::dev::ROLES_SQL)
        .await
        .map_err(|e| format!("creating roles and helpers: {e}"))?;
    let after = exists(&client).await?;
    drop(client);
    let _ = task.await;
    for (((name, _), was), is) in OBJECTS.iter().zip(before).zip(after) {
        let state = match (was, is) {
            (true, _) => "already present, left as it is",
            (false, true) => "created",
            (false, false) => "NOT created",
        };
        println!("{name}: {state}");
    }
    Ok(())
}

async fn exists(client: &tokio_postgres::Client) -> Result<Vec<bool>, String> {
    let mut out = Vec::with_capacity(OBJECTS.len());
    for (name, query) in OBJECTS {
        let row = client
            .query_one(*query, &[])
            .await
            .map_err(|e| format!("checking {name}: {e}"))?;
        out.push(row.get::<_, bool>(0));
    }
    Ok(out)
}
