//! What the database says about tables and roles: columns and their type names, primary
//! keys, which tables a publication has, whether RLS is on and which columns a role may
//! read.
//!
//! Only a table's shape is cached (dropped when a Relation message says it changed).
//! Security state is never cached: RLS can be enabled or forced, grants revoked, owners
//! and role attributes changed without any WAL a subscriber would see, and a stale
//! "visible" would leak rows. [`Catalog::security`] reads it afresh for every delivery
//! round, in one statement, so a change made before a commit applies to that commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::debug;

use super::pool::Pool;

/// One column, in attnum order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `pg_type.typname` (`int4`, `_text`, an enum's name …), what `columns[].type` shows.
    pub type_name: String,
    /// The type's OID.
    pub type_oid: u32,
    /// The type as SQL can name it (`format_type`, schema-qualified when needed).
    pub sql_type: String,
}

/// A published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Live, non-generated columns in attnum order (what pgoutput sends).
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns` of the primary key columns.
    pub pk: Vec<usize>,
}

impl TableInfo {
    /// Index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// What one role may do on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Superuser or BYPASSRLS: row checks are not needed.
    pub bypass_rls: bool,
    /// Per column of the table: SELECT privilege.
    pub selectable: Vec<bool>,
}

/// The security state of one delivery round, read in one statement.
#[derive(Debug, Default)]
pub struct Security {
    /// Table OID → RLS enabled (`relrowsecurity`).
    rls: HashMap<u32, bool>,
    /// (table OID, role) → what the role may read.
    access: HashMap<(u32, String), Arc<Access>>,
}

impl Security {
    /// Whether RLS is on for `table`; `None` if the table was not read (dropped).
    pub fn rls(&self, table: u32) -> Option<bool> {
        self.rls.get(&table).copied()
    }

    /// What `role` may read of `table`; `None` if the role or table no longer exists.
    pub fn access(&self, table: u32, role: &str) -> Option<Arc<Access>> {
        self.access.get(&(table, role.to_owned())).cloned()
    }
}

/// Reads a round's security state: per (table, role) pair, RLS on the table, the role's
/// superuser/BYPASSRLS attribute and the columns it may SELECT (through grants on the
/// table or the column, and role membership). A pair whose table or role is gone has no
/// row. `has_column_privilege` on a dropped column is false, so only live columns return.
const SECURITY: &str = "select p.i, c.relrowsecurity, r.rolsuper or r.rolbypassrls, \
       array(select a.attname::text from pg_attribute a \
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
               and has_column_privilege(r.oid, c.oid, a.attnum, 'SELECT')) \
     from unnest($1::oid[], $2::text[]) with ordinality as p(tbl, role, i) \
     join pg_class c on c.oid = p.tbl \
     join pg_roles r on r.rolname = p.role";

/// Catalog reads; table shapes are cached.
pub struct Catalog {
    pool: Arc<Pool>,
    tables: Mutex<HashMap<u32, Arc<TableInfo>>>,
}

/// The cache map. A poisoned lock only means another task panicked while holding it: the
/// map itself (inserts and removes of whole entries) is always consistent, so it is used.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    crate::sync::lock(m, "table catalog")
}

impl Catalog {
    /// A catalog reading through `pool`.
    pub fn new(pool: Arc<Pool>) -> Catalog {
        Catalog {
            pool,
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a table (its Relation message changed).
    pub fn invalidate(&self, oid: u32) {
        locked(&self.tables).remove(&oid);
    }

    /// The cached entry, without asking the database.
    pub fn cached(&self, oid: u32) -> Option<Arc<TableInfo>> {
        locked(&self.tables).get(&oid).cloned()
    }

    /// The table with this OID, or `None` when it no longer exists.
    pub async fn table(&self, oid: u32) -> Result<Option<Arc<TableInfo>>, tokio_postgres::Error> {
        if let Some(t) = self.cached(oid) {
            return Ok(Some(t));
        }
        let conn = self.pool.checkout().await?;
        let Some(row) = conn
            .query_opt(
                "select n.nspname::text, c.relname::text \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = $1",
                &[&oid],
            )
            .await?
        else {
            return Ok(None);
        };
        let columns = conn
            .query(
                "select a.attname::text, t.typname::text, a.atttypid, format_type(a.atttypid, null) \
                 from pg_attribute a join pg_type t on t.oid = a.atttypid \
                 where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' \
                 order by a.attnum",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| ColumnInfo {
                name: r.get(0),
                type_name: r.get(1),
                type_oid: r.get(2),
                sql_type: r.get(3),
            })
            .collect::<Vec<_>>();
        let pk_names: Vec<String> = conn
            .query(
                "select a.attname::text from pg_index i \
                 join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
                 where i.indrelid = $1 and i.indisprimary",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let pk = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| pk_names.contains(&c.name))
            .map(|(i, _)| i)
            .collect();
        let table = Arc::new(TableInfo {
            oid,
            schema: row.get(0),
            name: row.get(1),
            columns,
            pk,
        });
        debug!(oid, schema = %table.schema, table = %table.name, "catalog: table loaded");
        locked(&self.tables).insert(oid, table.clone());
        Ok(Some(table))
    }

    /// OIDs of the publication's tables matching `schema`/`table` (`*` = any).
    pub async fn published_tables(
        &self,
        publication: &str,
        schema: &str,
        table: &str,
    ) -> Result<Vec<u32>, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        let rows = conn
            .query(
                "select c.oid from pg_publication_tables p \
                 join pg_namespace n on n.nspname = p.schemaname \
                 join pg_class c on c.relnamespace = n.oid and c.relname = p.tablename \
                 where p.pubname = $1 and ($2 = '*' or p.schemaname = $2) and ($3 = '*' or p.tablename = $3)",
                &[&publication, &schema, &table],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The security state of a delivery round for these (table, role) pairs, read now.
    pub async fn security(&self, pairs: &[(&TableInfo, &str)]) -> Result<Security, tokio_postgres::Error> {
        let mut security = Security::default();
        if pairs.is_empty() {
            return Ok(security);
        }
        let oids: Vec<u32> = pairs.iter().map(|(t, _)| t.oid).collect();
        let roles: Vec<&str> = pairs.iter().map(|(_, r)| *r).collect();
        let mut conn = self.pool.checkout().await?;
        let statement = conn.prepare_cached(SECURITY).await?;
        for row in conn.query(&statement, &[&oids, &roles]).await? {
            let at: i64 = row.get(0);
            let Some((table, role)) = usize::try_from(at - 1).ok().and_then(|i| pairs.get(i)) else {
                continue;
            };
            let readable: Vec<String> = row.get(3);
            let access = Access {
                bypass_rls: row.get(2),
                selectable: table.columns.iter().map(|c| readable.contains(&c.name)).collect(),
            };
            security.rls.insert(table.oid, row.get(1));
            security
                .access
                .insert((table.oid, (*role).to_owned()), Arc::new(access));
        }
        Ok(security)
    }

    /// What `role` may read of `table`, read now. Errors if the role does not exist.
    pub async fn access(&self, role: &str, table: &TableInfo) -> Result<Arc<Access>, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        // `$1::regrole` raises "role … does not exist" for an unknown role, as Supabase's
        // subscription insert does.
        let bypass: bool = conn
            .query_one(
                "select r.rolsuper or r.rolbypassrls from pg_roles r where r.oid = $1::text::regrole",
                &[&role],
            )
            .await?
            .get(0);
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let rows = conn
            .query(
                "select has_column_privilege($1::text::regrole, $2::oid, col, 'SELECT') from unnest($3::text[]) col",
                &[&role, &table.oid, &names],
            )
            .await?;
        Ok(Arc::new(Access {
            bypass_rls: bypass,
            selectable: rows.iter().map(|r| r.get(0)).collect(),
        }))
    }

    /// Casts a filter value to the column type and back to text, as the walsender would
    /// print it (so runtime comparisons are between canonical texts). For `in`, the value
    /// is an array literal and each element comes back. Errors carry Postgres' text.
    pub async fn canonical(
        &self,
        value: &str,
        sql_type: &str,
        array: bool,
    ) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        let sql = if array {
            format!("select x::text from unnest($1::text::{sql_type}[]) x")
        } else {
            format!("select $1::text::{sql_type}::text")
        };
        let rows = conn.query(&sql, &[&value]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether a relation of this (quoted, qualified) name exists.
    pub async fn exists(&self, qualified: &str) -> Result<bool, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        let row = conn
            .query_one("select to_regclass($1) is not null", &[&qualified])
            .await?;
        Ok(row.get(0))
    }

    /// The server's `wal_level`.
    pub async fn wal_level(&self) -> Result<String, tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        let row = conn.query_one("select current_setting('wal_level')", &[]).await?;
        Ok(row.get(0))
    }

    /// Compiles a regex the way Postgres will (`'' ~ $1`), surfacing its error text.
    pub async fn check_regex(&self, pattern: &str) -> Result<(), tokio_postgres::Error> {
        let conn = self.pool.checkout().await?;
        conn.query_one("select '' ~ $1", &[&pattern]).await.map(|_| ())
    }
}

/// Quotes an identifier for SQL (`"na""me"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
