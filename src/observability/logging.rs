//! Tracing setup: `RUST_LOG` filter (default `info`), text or JSON lines on stderr.
//!
//! In JSON each line is one object with the event's fields at the top level
//! (`timestamp`, `level`, `target`, `message`, …) and the enclosing span's fields under
//! `span` — for anything logged on behalf of a connection that is
//! `{"name":"conn","conn_id":…,"peer":"…"}`.

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(e) = installed {
        eprintln!("realtime: cannot install the log subscriber: {e}");
    }
}
