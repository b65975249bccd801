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
pub mod config;
pub mod db_broadcast;
pub mod fanout;
pub mod http;
pub mod postgres_changes;
pub mod presence;
pub mod realtime_schema;
pub mod server;
pub mod transport;

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::{now_ms, App};
use crate::auth::Verifier;
use crate::config::Config;

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(mut config: Config) -> Result<(), String> {
    let jwks = match config.jwt_jwks.as_deref() {
        Some(v) => Some(auth::load_jwks(v).map_err(|e| format!("JWT_JWKS: {e}"))?),
        None => None,
    };
    if config.jwt_secret.is_none() && jwks.is_none() {
        config.jwt_secret = Some(development_secret()?);
    }
    let verifier =
        Verifier::new(config.jwt_secret.as_deref(), jwks.as_deref()).map_err(|e| format!("JWT configuration: {e}"))?;

    // Each client is a socket: use the whole file-descriptor allowance we are given.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(limit = n, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(url) = config.database_url.as_deref() {
        realtime_schema::start(realtime_schema::Settings {
            database_url: url,
            migrations: config.realtime_migrations,
            retention_hours: config.messages_retention_hours,
            retention_interval: std::time::Duration::from_secs(config.messages_retention_interval_secs),
        })
        .await?;
    }
    let pg = match config.database_url.as_deref() {
        Some(url) => Some(postgres_changes::PgChanges::start(postgres_changes::Settings {
            database_url: url,
            publication: &config.publication,
            slot: &config.slot_name,
            pool_size: config.db_pool_size,
            rls_batch: config.postgres_changes_rls_batch,
            start_delay: std::time::Duration::from_millis(config.replication_start_delay_ms),
        })?),
        None => None,
    };
    let app = App::new(config, verifier, pg, shutdown_rx.clone());
    db_broadcast::start(app.clone())?;

    // Scripts and tests read the bound address from this first stdout line.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "realtime-rs listening on {local}");
    let _ = stdout.flush();
    info!(%local, "listening");

    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    server::serve(listener, app, shutdown_rx).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Development mode: no JWT configuration was given. Generates a secret and prints
/// tokens that work against it, loudly.
fn development_secret() -> Result<String, String> {
    let secret = auth::random_secret();
    let exp = now_ms() / 1000 + 10 * 365 * 24 * 3600;
    let token = |role: &str| {
        auth::sign_hs256(
            &secret,
            &serde_json::json!({"role": role, "iss": "realtime-rs-dev", "iat": now_ms() / 1000, "exp": exp}),
        )
    };
    let anon = token("anon")?;
    let service = token("service_role")?;
    warn!("JWT_SECRET and JWT_JWKS are unset: DEVELOPMENT MODE with a random secret. Do not use in production.");
    eprintln!(
        "\n  realtime-rs development mode (set JWT_SECRET for real use)\n  JWT_SECRET={secret}\n  anon key:         {anon}\n  service_role key: {service}\n"
    );
    Ok(secret)
}
