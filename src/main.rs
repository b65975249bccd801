//! The `realtime` binary: configuration, tracing, then [`realtime::run`].

use std::process::ExitCode;

use clap::Parser;
use realtime::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    realtime::observability::logging::init(config.observability.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("realtime: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(realtime::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "realtime stopped");
            eprintln!("realtime: {e}");
            ExitCode::FAILURE
        }
    }
}
