//! Why the server could not start. Each variant names the setting or the resource at
//! fault, so `main` can print one actionable line and exit non-zero; nothing here happens
//! once the server is listening (after that, errors are logged and the server goes on).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A start-up failure.
#[derive(Debug)]
pub enum StartupError {
    /// `JWT_JWKS` could not be read or parsed.
    Jwks(String),
    /// The JWT secret / key set cannot make a verifier.
    Jwt(String),
    /// Development mode could not mint its keys.
    DevKeys(String),
    /// `realtime dev` could not prepare its throwaway database.
    Dev(String),
    /// The listening socket could not be bound.
    Listen { addr: SocketAddr, source: std::io::Error },
    /// The `realtime` schema could not be migrated or checked.
    Schema(String),
    /// Postgres Changes could not be configured (e.g. a malformed `DATABASE_URL`).
    PostgresChanges(String),
    /// Broadcast from Database could not be configured.
    DbBroadcast(String),
    /// `CLUSTER_URL` is malformed or names an engine this build does not support.
    Cluster(String),
    /// The `WEBHOOK_*` settings are incomplete or malformed.
    Webhooks(String),
    /// `LIMITS_FILE` could not be read or parsed.
    LimitsFile { path: PathBuf, message: String },
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::Jwks(e) => write!(f, "JWT_JWKS: {e}"),
            StartupError::Jwt(e) => write!(f, "JWT configuration: {e}"),
            StartupError::DevKeys(e) => write!(f, "development keys: {e}"),
            StartupError::Dev(e) => write!(f, "realtime dev: {e}"),
            StartupError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartupError::Schema(e)
            | StartupError::PostgresChanges(e)
            | StartupError::DbBroadcast(e)
            | StartupError::Cluster(e)
            | StartupError::Webhooks(e) => f.write_str(e),
            StartupError::LimitsFile { path, message } => write!(f, "LIMITS_FILE {}: {message}", path.display()),
        }
    }
}

impl std::error::Error for StartupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartupError::Listen { source, .. } => Some(source),
            _ => None,
        }
    }
}
