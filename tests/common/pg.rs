//! The PostgreSQL of the server's tests: the workspace's one harness
//! ([`realtime_test_pg::PgCluster`]: `initdb` + `pg_ctl` in a temp dir, as the `postgres`
//! user when root, `wal_level=logical`, trust auth on a free loopback port), with the
//! shape these tests use: a `port` field, `exec`, and stop/start through `&self`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Mutex, MutexGuard, PoisonError};

use realtime_test_pg::PgCluster;

/// A throwaway cluster; stopped and removed on drop.
pub struct Pg {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    cluster: Mutex<PgCluster>,
}

impl Pg {
    pub fn start() -> Pg {
        Pg::start_with_wal_level("logical")
    }

    /// A cluster with another `wal_level` (to test what the server says about it).
    pub fn start_with_wal_level(wal_level: &'static str) -> Pg {
        // Commits need not wait for the disk here; the data is thrown away.
        let cluster = PgCluster::start_with(&[("wal_level", wal_level), ("synchronous_commit", "off")]);
        Pg {
            port: cluster.port(),
            cluster: Mutex::new(cluster),
        }
    }

    fn cluster(&self) -> MutexGuard<'_, PgCluster> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) {
        self.cluster().stop_fast();
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        self.cluster().start_again();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to test postgres");
        tokio::spawn(conn);
        client
    }

    /// Runs SQL (several statements allowed).
    pub async fn exec(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}
