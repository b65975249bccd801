//! Subcommands of the `realtime` binary besides serving: `realtime token` mints JWTs for
//! local use and scripts, `realtime dev` serves against a throwaway PostgreSQL, `realtime
//! db init` adds Supabase's roles and `auth.*` helpers to a plain PostgreSQL. They live
//! apart from [`crate::config`] so the server's settings stay one flat list.

pub mod db;
pub mod token;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// realtime-rs: a self-hosted, drop-in replacement for Supabase Realtime.
#[derive(Debug, Clone, Parser)]
#[command(name = "realtime", version, about)]
pub struct Cli {
    /// The server's settings (also read by the subcommands).
    #[command(flatten)]
    pub config: Config,
    /// `token`, `dev` or `db`; none = serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does; without a subcommand it serves.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print one HS256 JWT signed with JWT_SECRET (or the development secret of
    /// `realtime dev`), for API keys and test users.
    Token(token::TokenArgs),
    /// Serve with a throwaway PostgreSQL (wal_level=logical, Supabase-shaped roles, a
    /// demo table) so Postgres Changes work with no setup; removed on exit.
    Dev(crate::dev::DevArgs),
    /// Database set-up for Postgres Changes on a plain PostgreSQL.
    #[command(subcommand)]
    Db(db::DbCommand),
}

pub use crate::dev::DEV_JWT_SECRET;
