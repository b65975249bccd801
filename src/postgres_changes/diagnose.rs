//! What a database that is not Supabase's is missing for Postgres Changes, said plainly.
//!
//! On a plain PostgreSQL the Supabase-shaped pieces (the `anon`/`authenticated` roles,
//! their grants, the publication, `wal_level = logical`) are often absent, and Supabase's
//! own messages for that are easy to miss: a bare `role "anon" does not exist`, rows that
//! arrive as `Error 401: Unauthorized`, or no message at all. Each check here runs when a
//! subscription is resolved, logs one warning naming the fix, and gives the hint that is
//! appended to the `system` error when there is one. Supabase's texts stay as they are
//! (clients and tests compare them); the hint follows them.

use tracing::warn;

use super::catalog::{quote_ident, Access, Catalog, TableInfo};

/// The hint for a subscription refused because no published table matched: when the
/// table exists but is not in the publication, say so and how to add it. `None` when
/// the table does not exist (Supabase's text says enough) or the binding has wildcards.
pub async fn not_published(catalog: &Catalog, publication: &str, schema: &str, table: &str) -> Option<String> {
    if schema == "*" || table == "*" {
        return None;
    }
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    match catalog.exists(&name).await {
        Ok(true) => {
            let hint = format!(
                "The table {name} exists but is not in the publication {publication}: alter publication {} add table {name};",
                quote_ident(publication)
            );
            warn!(table = %name, publication, "postgres_changes: table not in the publication. {hint}");
            Some(hint)
        }
        Ok(false) => None,
        Err(e) => {
            warn!(table = %name, error = %e, "cannot check whether the table exists");
            None
        }
    }
}

/// The hint for a role that does not exist (`42704`, the JWT's `role` claim).
pub fn missing_role(role: &str) -> String {
    let hint = format!(
        "The database has no role {}: the JWT's role claim names the role changes are read as. Create it and let the server's user switch to it: create role {} nologin; grant {} to current_user; grant usage on schema public to {}; (README: On a plain (non-Supabase) PostgreSQL)",
        quote_ident(role),
        quote_ident(role),
        quote_ident(role),
        quote_ident(role)
    );
    warn!(role, "postgres_changes: missing role. {hint}");
    hint
}

/// Warns when the role may read no column of the table: every change would then arrive
/// as `Error 401: Unauthorized` with an empty record, as on Supabase.
pub fn check_select(role: &str, table: &TableInfo, access: &Access) {
    if access.bypass_rls || access.selectable.iter().any(|&s| s) {
        return;
    }
    warn!(
        role,
        table = %table.name,
        "postgres_changes: the role has no SELECT privilege on {}.{}: its changes arrive as `Error 401: Unauthorized`. Grant it: grant select on {}.{} to {};",
        table.schema,
        table.name,
        quote_ident(&table.schema),
        quote_ident(&table.name),
        quote_ident(role)
    );
}

/// The `system` error for subscribers while the server cannot stream because
/// `wal_level` is not `logical`; `None` when it is (or cannot be read).
pub async fn wal_level(catalog: &Catalog) -> Option<String> {
    match catalog.wal_level().await {
        Ok(level) if level != "logical" => {
            let message = format!(
                "Realtime cannot stream changes: the database has wal_level = {level}. Set wal_level = logical (alter system set wal_level = logical) and restart PostgreSQL"
            );
            warn!(wal_level = %level, "postgres_changes: {message}");
            Some(message)
        }
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cannot read wal_level");
            None
        }
    }
}
