//! Errors of the replication client and the decoder.

use std::fmt;

/// What went wrong, and whether reconnecting can help ([`WalError::is_transient`]).
#[derive(Debug)]
pub enum WalError {
    /// Socket error, or the server closed the connection.
    Io(std::io::Error),
    /// Authentication failed or is not supported.
    Auth(String),
    /// The server sent an ErrorResponse.
    Server {
        /// SQLSTATE, e.g. `55006` (object in use).
        code: String,
        /// The message text.
        message: String,
    },
    /// The server sent something this client does not understand.
    Protocol(String),
    /// A pgoutput message could not be decoded.
    Decode(String),
    /// Bad configuration (connection string, names).
    Config(String),
}

impl WalError {
    /// True when retrying later may succeed (network, server restarting, slot busy);
    /// false for errors that need an operator (bad password, missing publication).
    pub fn is_transient(&self) -> bool {
        match self {
            WalError::Io(_) => true,
            WalError::Server { code, .. } => {
                // 08: connection exception, 53: insufficient resources, 55006: object in
                // use (slot held by another backend), 57P: operator intervention (shutdown).
                code.starts_with("08") || code.starts_with("53") || code == "55006" || code.starts_with("57P")
            }
            WalError::Auth(_) | WalError::Protocol(_) | WalError::Decode(_) | WalError::Config(_) => false,
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io(e) => write!(f, "replication I/O error: {e}"),
            WalError::Auth(m) => write!(f, "replication authentication failed: {m}"),
            WalError::Server { code, message } => write!(f, "ERROR {code}: {message}"),
            WalError::Protocol(m) => write!(f, "replication protocol error: {m}"),
            WalError::Decode(m) => write!(f, "pgoutput decode error: {m}"),
            WalError::Config(m) => write!(f, "replication configuration error: {m}"),
        }
    }
}

impl std::error::Error for WalError {}

impl From<std::io::Error> for WalError {
    fn from(e: std::io::Error) -> Self {
        WalError::Io(e)
    }
}
