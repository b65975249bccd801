//! realtime-rs: a self-hosted, drop-in replacement for Supabase Realtime.
//!
//! Data flows one way: socket → [`transport`] → [`channel`] → capability
//! ([`broadcast`], [`presence`], [`postgres_changes`]) → [`fanout`] → each client's
//! outbox → socket. [`auth`] verifies JWTs, [`api`] serves REST, [`config`] holds the
//! settings, [`server`] accepts connections.

pub mod api;
pub mod app;
pub mod auth;
pub mod authorization;
pub mod broadcast;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db_broadcast;
pub mod dev;
pub mod error;
pub mod fanout;
pub mod http;
pub mod inspector;
pub mod limits;
pub mod observability;
pub mod postgres_changes;
pub mod presence;
pub mod publish;
pub mod realtime_schema;
pub mod replication;
pub mod server;
pub mod sync;
pub mod transport;
pub mod webhooks;

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::App;
use crate::auth::Verifier;
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::StartupError;

/// Lines printed on stdout after the listening line, given the bound address (what
/// `realtime dev` tells the user: its database, keys and a snippet).
pub type Banner = Box<dyn FnOnce(SocketAddr) -> Vec<String> + Send>;

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), StartupError> {
    run_with(config, Box::new(|_| Vec::new())).await
}

/// [`run`], printing `banner`'s lines on stdout after the listening line.
pub async fn run_with(mut config: Config, banner: Banner) -> Result<(), StartupError> {
    observability::init();
    let jwks = match config.jwt_jwks.as_deref() {
        Some(v) => Some(auth::load_jwks(v).map_err(StartupError::Jwks)?),
        None => None,
    };
    let mut key_lines = Vec::new();
    if config.jwt_secret.is_none() && jwks.is_none() {
        let (secret, lines) = development_secret().map_err(StartupError::DevKeys)?;
        config.jwt_secret = Some(secret);
        config.dev_keys = config::DevKeys::from_lines(&lines);
        key_lines = lines;
    } else if config.jwt_secret.as_deref() == Some(dev::DEV_JWT_SECRET) {
        // `realtime dev`'s public secret: its keys are no secret either.
        config.dev_keys = development_keys(dev::DEV_JWT_SECRET)
            .ok()
            .and_then(|lines| config::DevKeys::from_lines(&lines));
    } else if let Some(warning) = config.jwt_secret.as_deref().and_then(short_secret_warning) {
        warn!("{warning}");
    }
    let verifier = Verifier::new(config.jwt_secret.as_deref(), jwks.as_deref()).map_err(StartupError::Jwt)?;

    // Each client is a socket: use the whole file-descriptor allowance we are given, and
    // keep stalled (not yet upgraded) connections well under it.
    let nofile = server::nofile::raise();
    let pending_cap = server::nofile::pending_cap(config.max_pending_connections, nofile);
    server::nofile::report(
        config.max_pending_connections,
        pending_cap,
        config.max_concurrent_users,
        nofile,
    );
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartupError::Listen { addr, source })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(url) = config.database_url.as_deref() {
        realtime_schema::start(realtime_schema::Settings {
            database_url: url,
            migrations: config.realtime_migrations,
            retention_hours: config.messages_retention_hours,
            retention_interval: std::time::Duration::from_secs(config.messages_retention_interval_secs),
        })
        .await
        .map_err(StartupError::Schema)?;
    }
    if let Some(url) = config.database_url.as_deref() {
        create_slots(url, &config).await;
    }
    let pg = match config.database_url.as_deref() {
        Some(url) => Some(
            postgres_changes::PgChanges::start(postgres_changes::Settings {
                database_url: url,
                publication: &config.publication,
                slot: &config.slot_name,
                pool_size: config.db_pool_size,
                rls_batch: config.postgres_changes_rls_batch,
                max_record_bytes: config.max_record_bytes,
                max_in_values: config.max_in_filter_values,
            })
            .map_err(StartupError::PostgresChanges)?,
        ),
        None => None,
    };
    let history = public_history(&config, pg.as_ref());
    let limits = std::sync::Arc::new(limits::Limits::new(&config, load_tiers(&config)?));
    limits::Limits::spawn_ticker(&limits, std::time::Duration::from_millis(config.rate_tick_ms));
    let cluster = cluster_settings(&config);
    let webhooks = webhooks::Settings::from_config(&config).map_err(StartupError::Webhooks)?;
    let app =
        App::new(config, verifier, pg, limits, history, cluster, shutdown_rx.clone()).map_err(StartupError::Cluster)?;
    start_replication(&app, &shutdown_rx)?;
    spawn_history_sweep(&app);
    tokio::spawn(presence::run_flusher(app.presence.clone(), app.publish.clone()));
    tokio::spawn(presence::run_expiry(app.presence.clone(), app.publish.clone()));
    if let Some(settings) = webhooks {
        let hooks = webhooks::Webhooks::start(settings);
        app.publish.observe(hooks.clone());
        if let Some(cluster) = &app.cluster {
            cluster.observe(hooks.clone());
        }
        app.presence.observe(hooks);
    }

    let signal = shutdown_signal();
    // Scripts and tests read the bound address from this first stdout line; what a user
    // copies (keys, DATABASE_URL) follows as plain lines, never inside log lines.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "realtime-rs listening on {local}");
    for line in key_lines.into_iter().chain(banner(local)) {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    info!(%local, "listening");

    tokio::spawn(async move {
        signal.await;
        info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    server::serve(listener, app, shutdown_rx, pending_cap).await;
    Ok(())
}

/// The limit profiles of LIMITS_FILE (none without it).
/// Starts the replication streams (Postgres Changes, Broadcast from Database): at once on a
/// single node; in a cluster only while this node holds the replication lease.
fn start_replication(
    app: &std::sync::Arc<App>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StartupError> {
    let Some(pg) = app.pg.clone() else {
        return Ok(());
    };
    let messages = db_broadcast::source(app).map_err(StartupError::DbBroadcast)?;
    let db = pg.db_config().clone();
    let start: cluster::leader::StartStreams = {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        Box::new(move || {
            let delay = std::time::Duration::from_millis(app.config.replication_start_delay_ms);
            let mut streams = vec![postgres_changes::replication::spawn(
                &pg,
                app.publish.clone(),
                delay,
                shutdown.clone(),
            )];
            if let Some(source) = messages.clone() {
                streams.push(db_broadcast::spawn(app.clone(), source));
            }
            streams
        })
    };
    match &app.cluster {
        None => drop(start()),
        Some(cluster) => {
            let key = cluster::leader::lock_key(&app.config.slot_name);
            cluster::leader::spawn(db, key, start, cluster.clone(), shutdown.clone());
        }
    }
    Ok(())
}

/// The cluster settings, when `CLUSTER_URL` is set.
fn cluster_settings(config: &Config) -> Option<cluster::Settings> {
    let url = config.cluster_url.clone()?;
    Some(cluster::Settings {
        url,
        node_id: config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>())),
        namespace: config.cluster_namespace.clone(),
        unsubscribe_delay: std::time::Duration::from_millis(config.cluster_unsubscribe_delay_ms),
        history_retention: config
            .replay_public
            .then(|| std::time::Duration::from_secs(config.messages_retention_hours.saturating_mul(3600))),
    })
}

fn load_tiers(config: &Config) -> Result<ahash::AHashMap<String, limits::ClientLimits>, StartupError> {
    let Some(path) = &config.limits_file else {
        return Ok(ahash::AHashMap::new());
    };
    let failed = |message: String| StartupError::LimitsFile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let tiers = limits::load_tiers(&text, &limits::global_client_limits(config)).map_err(|e| failed(e.to_string()))?;
    info!(tiers = ?tiers.keys().collect::<Vec<_>>(), claim = %config.tier_claim, "limit profiles loaded");
    Ok(tiers)
}

/// Creates the replication slots (when their publications exist) before the server says it
/// is listening: a change committed after that line is then never missed, even on a
/// fresh database. A database that is down does not hold the server up: the replication
/// tasks create the slots when it is back.
async fn create_slots(url: &str, config: &Config) {
    let Ok(db) = url.parse::<tokio_postgres::Config>() else {
        return; // reported by the replication tasks
    };
    for (slot, publication) in [
        (config.slot_name.as_str(), config.publication.as_str()),
        (
            config.messages_slot_name.as_str(),
            realtime_schema::MESSAGES_PUBLICATION,
        ),
    ] {
        let ensure = postgres_changes::pool::ensure_slot(&db, slot, publication);
        match tokio::time::timeout(std::time::Duration::from_secs(10), ensure).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(slot, error = %e, "cannot create the replication slot now; streaming will"),
            Err(_) => warn!(
                slot,
                "creating the replication slot timed out; streaming will create it"
            ),
        }
    }
}

/// The public broadcast history (`REPLAY_PUBLIC`), in the database when there is one,
/// with its memory swept by the same retention as stored messages.
fn public_history(
    config: &Config,
    pg: Option<&std::sync::Arc<postgres_changes::PgChanges>>,
) -> Option<publish::history::History> {
    if !config.replay_public {
        return None;
    }
    let every = std::time::Duration::from_secs(config.messages_retention_interval_secs.max(1));
    let history = match pg {
        Some(pg) => publish::history::History::with_database(pg.shared_pool(), config.messages_retention_hours, every),
        None if config.cluster_url.is_some() => {
            info!("REPLAY_PUBLIC without DATABASE_URL: public broadcast history is kept in the cluster engine");
            publish::history::History::in_memory()
        }
        None => {
            warn!("REPLAY_PUBLIC without DATABASE_URL: public broadcast history is kept in memory only");
            publish::history::History::in_memory()
        }
    };
    info!("REPLAY_PUBLIC: public broadcasts are kept for replay");
    Some(history)
}

/// Forgets in-memory history of topics silent for longer than the retention.
fn spawn_history_sweep(app: &std::sync::Arc<App>) {
    let hours = app.config.messages_retention_hours;
    if app.publish.history().is_none() || hours == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(app.config.messages_retention_interval_secs.max(1));
    // Weak: shutdown waits for every strong reference to the app to go.
    let app = std::sync::Arc::downgrade(app);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let Some(app) = app.upgrade() else { return };
            if let Some(history) = app.publish.history() {
                history.forget_older_than(now_ms() - i64::try_from(hours * 3_600_000).unwrap_or(i64::MAX));
            }
        }
    });
}

/// Registers SIGTERM/SIGINT now and returns a future that resolves on either. Called
/// before the listening line is printed: a script that sends SIGTERM as soon as it reads
/// that line must reach the graceful path, not the default action that kills the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (term, int) => {
                    warn!(
                        term = term.is_ok(),
                        int = int.is_ok(),
                        "cannot register signal handlers; Ctrl-C only"
                    );
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Development mode: no JWT configuration was given. Generates a secret and returns it
/// with the stdout lines that hand out tokens working against it (`JWT_SECRET=`,
/// `ANON_KEY=`, `SERVICE_ROLE_KEY=`, ready for a `.env`).
fn development_secret() -> Result<(String, Vec<String>), String> {
    let secret = auth::random_secret();
    let lines = development_keys(&secret)?;
    warn!("JWT_SECRET and JWT_JWKS are unset: DEVELOPMENT MODE with a random secret (keys on stdout). Do not use in production.");
    Ok((secret, lines))
}

/// `JWT_SECRET=…`, `ANON_KEY=…` and `SERVICE_ROLE_KEY=…` for `secret` (keys valid ten years).
pub fn development_keys(secret: &str) -> Result<Vec<String>, String> {
    let exp = now_ms() / 1000 + 10 * 365 * 24 * 3600;
    let token = |role: &str| {
        auth::sign_hs256(
            secret,
            &serde_json::json!({"role": role, "iss": "realtime-rs-dev", "iat": now_ms() / 1000, "exp": exp}),
        )
    };
    Ok(vec![
        format!("JWT_SECRET={secret}"),
        format!("ANON_KEY={}", token("anon")?),
        format!("SERVICE_ROLE_KEY={}", token("service_role")?),
    ])
}

/// HS256 with a short secret is open to offline guessing from any one token (RFC 7518
/// §3.2 asks for a key at least as long as the hash: 32 bytes).
pub fn short_secret_warning(secret: &str) -> Option<String> {
    (secret.len() < 32).then(|| {
        format!(
            "JWT_SECRET is {} bytes long: an HS256 secret shorter than 32 bytes can be guessed \
             offline from any token it signed; use 32 random bytes or more (`openssl rand -base64 32`)",
            secret.len()
        )
    })
}
