//! The `data` object of a `postgres_changes` frame, exactly as Supabase builds it
//! (protocol.md §7.3): columns the viewer may read, `record` from the new image (unchanged
//! TOAST values filled from the old image when there is one), `old_record` from the
//! replica identity (primary key only for DELETE on RLS tables), the `Error 400/401/413`
//! rows, and values rendered like `to_jsonb`.

use realtime_protocol::filter::Action;
use realtime_wal::value::write_json;

use super::catalog::TableInfo;
use super::filter::Cell;

/// The size a value may have in an oversized row (Supabase: 64 bytes).
const SMALL_VALUE: usize = 64;

/// A row change in the table's column order.
pub struct Change<'a> {
    /// INSERT, UPDATE or DELETE (never `All`).
    pub kind: Action,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub commit_timestamp: &'a str,
    /// New image (INSERT/UPDATE).
    pub new: Option<Vec<Cell<'a>>>,
    /// Old image: the identity (key columns, or the whole row with REPLICA IDENTITY FULL).
    pub old: Option<Vec<Cell<'a>>>,
    /// Size of the change's values in bytes (for the 413 rule).
    pub size: usize,
    /// The table has Row Level Security (read for this change's delivery round).
    pub rls: bool,
}

/// Builds `data` for one viewer: `columns` marks which table columns it sees (selectable,
/// and in `select` + primary key when the binding selected columns).
/// Rows over `max_record_bytes` (the whole change; `MAX_RECORD_BYTES`, Supabase: 1 MiB)
/// keep only small values.
pub fn data(
    table: &TableInfo,
    change: &Change<'_>,
    columns: &[bool],
    pk_selectable: bool,
    max_record_bytes: usize,
) -> Vec<u8> {
    let kind = match change.kind {
        Action::Insert => "INSERT",
        Action::Update => "UPDATE",
        Action::Delete | Action::All => "DELETE",
    };
    let mut out = Vec::with_capacity(256 + change.size);
    let push_str = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"schema\":");
    push_str(&mut out, &table.schema);
    out.extend_from_slice(b",\"table\":");
    push_str(&mut out, &table.name);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');

    let error = if change.kind != Action::Delete && table.pk.is_empty() {
        Some("Error 400: Bad Request, no primary key")
    } else if change.kind != Action::Delete && !pk_selectable {
        Some("Error 401: Unauthorized")
    } else {
        None
    };
    if let Some(error) = error {
        // Supabase sends only schema/table/type, which its poller coalesces like this.
        out.extend_from_slice(b",\"commit_timestamp\":null,\"columns\":[],\"record\":{}");
        if change.kind != Action::Insert {
            out.extend_from_slice(b",\"old_record\":{}");
        }
        out.extend_from_slice(b",\"errors\":[");
        push_str(&mut out, error);
        out.extend_from_slice(b"]}");
        return out;
    }

    out.extend_from_slice(b",\"commit_timestamp\":");
    push_str(&mut out, change.commit_timestamp);
    out.extend_from_slice(b",\"columns\":[");
    let mut first = true;
    for (i, col) in table.columns.iter().enumerate() {
        if !columns[i] {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(b"{\"name\":");
        push_str(&mut out, &col.name);
        out.extend_from_slice(b",\"type\":");
        push_str(&mut out, &col.type_name);
        out.push(b'}');
    }
    out.push(b']');

    let oversized = change.size > max_record_bytes;
    if let Some(new) = &change.new {
        out.extend_from_slice(b",\"record\":");
        // Unchanged TOAST values are not in the new image; the old image has them only
        // with REPLICA IDENTITY FULL. Otherwise the key is left out, as Supabase does.
        let filled: Vec<Cell<'_>> = new
            .iter()
            .enumerate()
            .map(|(i, c)| match (c, change.old.as_ref().and_then(|o| o.get(i))) {
                (Cell::Missing, Some(old)) => *old,
                (c, _) => *c,
            })
            .collect();
        write_record(&mut out, table, &filled, columns, oversized);
    }
    if let Some(old) = &change.old {
        out.extend_from_slice(b",\"old_record\":");
        if change.kind == Action::Delete && change.rls {
            // "We can't secure deletes": only the key leaves the database.
            let pk_only: Vec<bool> = (0..table.columns.len())
                .map(|i| columns[i] && table.pk.contains(&i))
                .collect();
            write_record(&mut out, table, old, &pk_only, oversized);
        } else {
            write_record(&mut out, table, old, columns, oversized);
        }
    }
    if oversized {
        out.extend_from_slice(b",\"errors\":[\"Error 413: Payload Too Large\"]}");
    } else {
        out.extend_from_slice(b",\"errors\":null}");
    }
    out
}

fn write_record(out: &mut Vec<u8>, table: &TableInfo, cells: &[Cell<'_>], columns: &[bool], oversized: bool) {
    out.push(b'{');
    let mut first = true;
    let mut value = Vec::new();
    for (i, col) in table.columns.iter().enumerate() {
        if !columns.get(i).copied().unwrap_or(false) {
            continue;
        }
        value.clear();
        match cells.get(i).copied().unwrap_or(Cell::Missing) {
            Cell::Missing => continue,
            Cell::Null => value.extend_from_slice(b"null"),
            Cell::Text(t) => write_json(col.type_oid, t, &mut value),
        }
        if oversized && value.len() > SMALL_VALUE {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, &col.name);
        out.push(b':');
        out.extend_from_slice(&value);
    }
    out.push(b'}');
}

/// Unix microseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ`, Supabase's `commit_timestamp`.
pub fn commit_timestamp(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(1_000_000);
    let millis = unix_us.rem_euclid(1_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_timestamps() {
        assert_eq!(commit_timestamp(0), "1970-01-01T00:00:00.000Z");
        // 2025-11-19T00:22:40.877Z
        assert_eq!(commit_timestamp(1_763_511_760_877_123), "2025-11-19T00:22:40.877Z");
        assert_eq!(commit_timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
