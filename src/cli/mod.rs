//! Subcommands of the `realtime` binary besides serving: `realtime token` mints JWTs for
//! local use and scripts, `realtime dev` serves against a throwaway PostgreSQL, `realtime
//! db init` adds Supabase's roles and `auth.*` helpers to a plain PostgreSQL. They live
//! apart from [`crate::config`] so the server's settings stay one flat list.

pub mod db;
pub mod token;

use clap::Subcommand;

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

/// The secret `realtime dev` and `realtime token` use when JWT_SECRET is unset. Public
/// on purpose (like the Supabase CLI's local secret): tokens minted in one terminal work
/// against a dev server started in another. Never for a reachable server.
pub const DEV_JWT_SECRET: &str = "realtime-rs-development-secret-not-for-production";
