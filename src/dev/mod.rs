//! `realtime dev` (or `DATABASE_URL=dev`): one command to try every capability, Postgres
//! Changes included. Starts a throwaway PostgreSQL ([`cluster`]), gives it what Supabase's
//! database has (roles, `auth.*` helpers: `roles.sql`), a demo table with an owner-only
//! policy in the publication (`demo.sql`), then serves as usual and prints, after the
//! listening line, `DATABASE_URL=`, the keys, and a supabase-js snippet that inserts a
//! row and receives it.

pub mod cluster;

use clap::Args;
use tracing::info;

use crate::config::Config;

/// The secret `realtime dev` and `realtime token` use when JWT_SECRET is unset. Public
/// on purpose (like the Supabase CLI's local secret): tokens minted in one terminal work
/// against a dev server started in another. Never for a reachable server.
pub const DEV_JWT_SECRET: &str = "realtime-rs-development-secret-not-for-production";

/// The Supabase-shaped roles and `auth.uid()`/`auth.role()`/`auth.jwt()`; creates only
/// what is missing.
pub const ROLES_SQL: &str = include_str!("roles.sql");
/// The demo table `public.todos` and its owner-only policy.
pub const DEMO_SQL: &str = include_str!("demo.sql");
/// The demo user the printed `USER_TOKEN` signs in as (`auth.uid()` in the policy).
pub const DEMO_USER: &str = "00000000-0000-4000-8000-000000000001";

/// Marks the start and end of the snippet on stdout (scripts and tests cut it out).
pub const SNIPPET_BEGIN: &str =
    "----- demo.mjs: save it next to node_modules with @supabase/supabase-js, run `node demo.mjs` (Node >= 22) -----";
/// See [`SNIPPET_BEGIN`].
pub const SNIPPET_END: &str = "----- end of demo.mjs -----";

/// `realtime dev [--keep]`
#[derive(Debug, Clone, Default, Args)]
pub struct DevArgs {
    /// Keep the cluster's directory on exit (the command to start it again is printed).
    #[arg(long)]
    pub keep: bool,
}

/// A started development database and what to print once the server listens.
pub struct Prepared {
    /// Stop it (after the server and its replication tasks are gone) with
    /// [`cluster::Cluster::finish`].
    pub cluster: cluster::Cluster,
    /// Lines for [`crate::run_with`].
    pub banner: crate::Banner,
}

/// Starts the cluster, sets it up, and points `config` at it: `DATABASE_URL`, the
/// development secret unless `JWT_SECRET`/`JWT_JWKS` is set, and no replication start
/// delay (a fresh cluster has no earlier clients to wait for) unless set.
pub async fn prepare(config: &mut Config, args: &DevArgs) -> Result<Prepared, String> {
    let bindir = cluster::find_bindir()?;
    info!(bindir = %bindir.display(), "starting a development PostgreSQL");
    let cluster = cluster::Cluster::start(bindir, args.keep)?;
    let url = cluster.url();
    setup(&url, &config.publication).await?;

    config.database_url = Some(url.clone());
    if config.jwt_secret.is_none() && config.jwt_jwks.is_none() {
        tracing::warn!("realtime dev: keys are signed with the public development secret; never expose this server");
        config.jwt_secret = Some(DEV_JWT_SECRET.to_owned());
    }
    if std::env::var_os("REPLICATION_START_DELAY_MS").is_none() {
        config.replication_start_delay_ms = 0;
    }
    let mut keys = match config.jwt_secret.as_deref() {
        Some(secret) => {
            let mut lines = crate::development_keys(secret)?;
            let user = crate::auth::sign_hs256(
                secret,
                &serde_json::json!({"role": "authenticated", "sub": DEMO_USER, "iss": "realtime-rs-dev",
                    "iat": crate::clock::now_ms() / 1000, "exp": crate::clock::now_ms() / 1000 + 10 * 365 * 86_400}),
            )?;
            lines.push(format!("USER_TOKEN={user}"));
            lines
        }
        None => Vec::new(), // JWKS only: the user brings their own tokens
    };
    let psql = cluster.psql();
    let banner: crate::Banner = Box::new(move |addr| {
        let key = |name: &str| {
            keys.iter()
                .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| format!("<{name}>"))
        };
        let snippet = snippet(
            &format!("http://{addr}"),
            &key("ANON_KEY"),
            &key("USER_TOKEN"),
            &psql,
            &url,
        );
        let mut lines = vec![format!("DATABASE_URL={url}")];
        lines.append(&mut keys);
        lines.push(String::new());
        lines.push(SNIPPET_BEGIN.to_owned());
        lines.extend(snippet.lines().map(str::to_owned));
        lines.push(SNIPPET_END.to_owned());
        lines
    });
    Ok(Prepared { cluster, banner })
}

/// Roles and helpers, the demo table, and the publication (created with the demo table
/// in it when absent).
async fn setup(url: &str, publication: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to the development PostgreSQL: {e}"))?;
    let task = tokio::spawn(connection);
    let sql = format!(
        "{ROLES_SQL}\n{DEMO_SQL}\n\
         do $$ begin\n\
           if not exists (select from pg_publication where pubname = {name}) then\n\
             create publication {ident} for table public.todos;\n\
           end if;\n\
         end $$;",
        name = quote_literal(publication),
        ident = quote_ident(publication),
    );
    let result = client.batch_execute(&sql).await;
    drop(client);
    let _ = task.await;
    result.map_err(|e| format!("setting up the development PostgreSQL: {e}"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A supabase-js program that signs in as the demo user, waits for the server's
/// "Subscribed to PostgreSQL", inserts a row with psql (standing in for the app's
/// write) and prints the row it receives.
pub fn snippet(http_url: &str, anon_key: &str, user_token: &str, psql: &str, database_url: &str) -> String {
    let js = |s: &str| serde_json::Value::from(s).to_string();
    let insert = format!("insert into public.todos (owner, task) values ('{DEMO_USER}', 'try realtime-rs')");
    format!(
        r#"import {{ execFileSync }} from 'node:child_process'
import {{ createClient }} from '@supabase/supabase-js'

const supabase = createClient({url}, {anon})
// Sign in as the demo user: the policy on public.todos shows a row to its owner only.
await supabase.realtime.setAuth({user})
supabase
  .channel('demo-todos')
  .on('postgres_changes', {{ event: 'INSERT', schema: 'public', table: 'todos' }}, ({{ new: row }}) => {{
    console.log('received', JSON.stringify(row))
    process.exit(0)
  }})
  .on('system', {{}}, (msg) => {{
    if (msg.extension !== 'postgres_changes') return
    if (msg.status !== 'ok') return console.error('postgres_changes:', msg.message)
    // The server now streams the table: insert a row (psql stands in for your app).
    execFileSync({psql}, [{db}, '-c', {insert}], {{ stdio: 'inherit' }})
  }})
  .subscribe((status, err) => console.log('channel', status, err?.message ?? ''))
"#,
        url = js(http_url),
        anon = js(anon_key),
        user = js(user_token),
        psql = js(psql),
        db = js(database_url),
        insert = js(&insert),
    )
}
