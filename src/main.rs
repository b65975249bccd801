//! The `realtime` binary: configuration, tracing, then [`realtime::run`], or one of the
//! subcommands ([`realtime::cli`]): `realtime token` prints a JWT, `realtime dev` (also
//! `DATABASE_URL=dev`) serves against a throwaway PostgreSQL.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use realtime::cli::{Cli, Command};
use realtime::config::Config;
use realtime::dev::DevArgs;

fn main() -> ExitCode {
    let Cli { config, command } = Cli::parse();
    match command {
        Some(Command::Token(args)) => match realtime::cli::token::run(&config, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("realtime token: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Dev(args)) => serve(config, Some(args)),
        Some(Command::Db(realtime::cli::db::DbCommand::Init)) => db_init(&config),
        None if config.database_url.as_deref() == Some("dev") => serve(config, Some(DevArgs::default())),
        None => serve(config, None),
    }
}

/// `realtime db init`: a one-off on a small runtime.
fn db_init(config: &Config) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(realtime::cli::db::init(config.database_url.as_deref())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime db init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM/SIGINT; with `dev`, on a throwaway database stopped afterwards.
fn serve(mut config: Config, dev: Option<DevArgs>) -> ExitCode {
    realtime::observability::logging::init(config.observability.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("realtime: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cluster, result) = match dev {
        None => (None, runtime.block_on(realtime::run(config))),
        Some(args) => match runtime.block_on(realtime::dev::prepare(&mut config, &args)) {
            Ok(prepared) => (
                Some(prepared.cluster),
                runtime.block_on(realtime::run_with(config, prepared.banner)),
            ),
            Err(e) => (None, Err(realtime::error::StartupError::Dev(e.to_string()))),
        },
    };
    // Stop the replication tasks before their database goes away (no reconnect noise).
    runtime.shutdown_timeout(Duration::from_millis(200));
    if let Some(cluster) = cluster {
        cluster.finish();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "realtime stopped");
            eprintln!("realtime: {e}");
            ExitCode::FAILURE
        }
    }
}
