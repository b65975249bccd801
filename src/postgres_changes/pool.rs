//! A small pool of ordinary SQL connections (catalog reads, RLS checks).
//!
//! A connection is checked out exclusively: an RLS check switches `role` and
//! `request.jwt.claims` inside a transaction, and nothing else may run on that connection
//! meanwhile. Broken connections are replaced on the next checkout.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls, Statement};
use tracing::{debug, warn};

/// Most statements kept prepared per connection (the cache is emptied when full).
const STATEMENT_CACHE: usize = 256;

/// Fixed-size pool; connections are opened lazily.
pub struct Pool {
    config: Config,
    slots: Vec<Mutex<Option<Slot>>>,
    next: AtomicUsize,
}

/// An open connection and the statements prepared and functions created on it.
struct Slot {
    client: Client,
    statements: HashMap<String, Statement>,
    /// `pg_temp` functions created on this connection (they live as long as it does).
    functions: HashSet<String>,
}

/// A checked-out connection.
pub struct Conn<'a> {
    guard: MutexGuard<'a, Option<Slot>>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // `checkout` only hands out guards holding a client.
        match self.guard.as_ref() {
            Some(s) => &s.client,
            None => unreachable!("a checked-out connection always holds a client"),
        }
    }
}

impl Conn<'_> {
    /// `sql` prepared on this connection, once per connection (RLS checks run the same
    /// few statements every round; Postgres re-plans them itself after DDL).
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let Some(slot) = self.guard.as_mut() else {
            unreachable!("a checked-out connection always holds a client")
        };
        if let Some(s) = slot.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = slot.client.prepare(sql).await?;
        if slot.statements.len() >= STATEMENT_CACHE {
            slot.statements.clear();
        }
        slot.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// `sql` if [`Self::prepare_cached`] prepared it on this connection already.
    pub fn cached(&self, sql: &str) -> Option<Statement> {
        self.guard.as_ref().and_then(|slot| slot.statements.get(sql).cloned())
    }

    /// Runs `create` (which creates the `pg_temp` function `name`) once per connection.
    pub async fn ensure_function(&mut self, name: &str, create: &str) -> Result<(), tokio_postgres::Error> {
        let Some(slot) = self.guard.as_mut() else {
            unreachable!("a checked-out connection always holds a client")
        };
        if slot.functions.contains(name) {
            return Ok(());
        }
        slot.client.batch_execute(create).await?;
        slot.functions.insert(name.to_owned());
        Ok(())
    }
}

impl Pool {
    /// A pool of `size` connections to `config`'s database.
    pub fn new(config: Config, size: usize) -> Pool {
        Pool {
            config,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of connections.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Takes the next connection (round robin), opening it if needed.
    pub async fn checkout(&self) -> Result<Conn<'_>, tokio_postgres::Error> {
        // A free connection if there is one (rounds of delivery overlap and each holds
        // one), else wait in turn.
        let n = self.slots.len();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = match (0..n).find_map(|k| self.slots[(i + k) % n].try_lock().ok()) {
            Some(free) => free,
            None => self.slots[i].lock().await,
        };
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            let (client, connection) = self.config.connect(NoTls).await.inspect_err(|e| {
                warn!(error = %e, "cannot open a database connection");
            })?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "database connection ended");
                }
            });
            // Values must render like Supabase's (UTC timestamps, ISO dates). Kept
            // statements use their generic plan: they take arrays, whose lengths a custom
            // plan knows, so Postgres would otherwise plan each execution again (the
            // round's security read: 0.34 ms planning for 0.05 ms of work). Checks that
            // need a custom plan set it for their transaction.
            client
                .batch_execute(
                    "set application_name = 'realtime-rs'; set timezone = 'UTC'; set datestyle = 'ISO'; \
                     set extra_float_digits = 3; set plan_cache_mode = force_generic_plan",
                )
                .await?;
            *guard = Some(Slot {
                client,
                statements: HashMap::new(),
                functions: HashSet::new(),
            });
        }
        Ok(Conn { guard })
    }
}

/// Creates the persistent logical slot `slot` now if it is missing and `publication`
/// exists. Called at start, before streaming begins (possibly later): a slot keeps every
/// change from its creation on, so nothing committed during the start delay is lost,
/// while a slot created before its publication exists would hold changes Postgres can
/// never decode.
pub async fn ensure_slot(config: &Config, slot: &str, publication: &str) -> Result<bool, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "slot connection ended");
        }
    });
    let row = client
        .query_one(
            "select exists(select 1 from pg_publication where pubname = $1), \
                    exists(select 1 from pg_replication_slots where slot_name = $2)",
            &[&publication, &slot],
        )
        .await?;
    let (published, exists): (bool, bool) = (row.get(0), row.get(1));
    if published && !exists {
        client
            .execute("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
            .await?;
        debug!(slot, "replication slot created");
    }
    Ok(published)
}
