//! The replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//! `START_REPLICATION`) and the quoting and slot-name rules they need.

use super::*;

/// Postgres accepts only these slot names; checking here gives a clear configuration error
/// instead of a server error after connecting.
pub(super) fn validate_slot_name(slot: &str) -> Result<(), WalError> {
    if slot.is_empty() || slot.len() > 63 {
        return Err(WalError::Config(format!(
            "replication slot name {slot:?} must be 1 to 63 bytes"
        )));
    }
    if !slot
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(WalError::Config(format!(
            "replication slot name {slot:?} may contain only lowercase letters, digits and underscores"
        )));
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled (the walsender grammar's quoted identifier).
pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded single quotes doubled (the walsender grammar has no backslash
/// escapes in string literals).
pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) async fn identify_system(conn: &mut Conn) -> Result<(), WalError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let cell = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i))
            .cloned()
            .flatten()
            .unwrap_or_default()
    };
    if rows.len() != 1 {
        tracing::warn!(
            rows = rows.len(),
            "IDENTIFY_SYSTEM returned an unexpected number of rows"
        );
    }
    tracing::info!(systemid = %cell(0), timeline = %cell(1), xlogpos = %cell(2), dbname = %cell(3), "IDENTIFY_SYSTEM");
    Ok(())
}

pub(super) async fn create_slot(conn: &mut Conn, opts: &ReplicationOptions) -> Result<(), WalError> {
    let temporary = if opts.temporary_slot { "TEMPORARY " } else { "" };
    // PG15 introduced the parenthesized option list; older servers only know the legacy
    // keyword (which PG15+ still accept, but the modern form is the documented one).
    let snapshot = if conn.server_major == 0 || conn.server_major >= 15 {
        "(SNAPSHOT 'nothing')"
    } else {
        "NOEXPORT_SNAPSHOT"
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput {snapshot}",
        quote_ident(&opts.slot)
    );
    match conn.simple_query(&sql).await {
        Ok(rows) => {
            let consistent_point = rows
                .first()
                .and_then(|r| r.get(1))
                .cloned()
                .flatten()
                .unwrap_or_default();
            tracing::info!(
                slot = %opts.slot,
                temporary = opts.temporary_slot,
                %consistent_point,
                "replication slot created"
            );
            Ok(())
        }
        // 42710 duplicate_object: the slot exists (e.g. a persistent slot from a previous
        // run), which is exactly what a resuming consumer wants.
        Err(WalError::Server { code, .. }) if code == "42710" => {
            tracing::info!(slot = %opts.slot, "replication slot already exists; reusing it");
            Ok(())
        }
        Err(e) => {
            tracing::error!(slot = %opts.slot, error = %e, "could not create replication slot");
            Err(e)
        }
    }
}

pub(super) async fn start_replication(conn: &mut Conn, opts: &ReplicationOptions) -> Result<(), WalError> {
    // publication_names is a string literal holding a comma-separated identifier list, so the
    // name is quoted as an identifier first, then as a literal. 0/0 = resume from the slot's
    // confirmed_flush_lsn.
    let sql = format!(
        "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
        quote_ident(&opts.slot),
        quote_literal(&quote_ident(&opts.publication))
    );
    tracing::debug!(peer = %conn.peer, sql, "starting replication");
    conn.send_query(&sql).await?;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'W' => break,
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "START_REPLICATION notice");
            }
            b'S' => conn.note_parameter(&f.body),
            b'E' => {
                let e = frame::server_error(&f.body, "START_REPLICATION");
                tracing::error!(
                    slot = %opts.slot,
                    publication = %opts.publication,
                    error = %e,
                    "START_REPLICATION failed"
                );
                return Err(e);
            }
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} in reply to START_REPLICATION",
                    frame::printable(other)
                )))
            }
        }
    }
    tracing::info!(
        slot = %opts.slot,
        publication = %opts.publication,
        peer = %conn.peer,
        "logical replication streaming"
    );
    Ok(())
}
