//! A throwaway PostgreSQL 15 for tests: `initdb` + `pg_ctl` as the `postgres` user in a
//! temp dir, `wal_level=logical`, TCP on a free loopback port with trust auth
//! (shared/research/wal-rls.md §4.1). Stopped and removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pg {
    dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    wal_level: &'static str,
}

fn bindir() -> PathBuf {
    for candidate in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"] {
        if Path::new(candidate).join("pg_ctl").exists() && Path::new(candidate).join("initdb").exists() {
            return PathBuf::from(candidate);
        }
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("PostgreSQL binaries (pg_config) not found");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a PostgreSQL binary as the `postgres` user (initdb refuses root).
fn as_postgres(bin: &Path, args: &[&str]) {
    let status = Command::new("runuser")
        .arg("-u")
        .arg("postgres")
        .arg("--")
        .arg(bin)
        .args(args)
        .status()
        .expect("runuser");
    assert!(status.success(), "{} {args:?} failed", bin.display());
}

impl Pg {
    pub fn start() -> Pg {
        Pg::start_with_wal_level("logical")
    }

    /// A cluster with another `wal_level` (to test what the server says about it).
    pub fn start_with_wal_level(wal_level: &'static str) -> Pg {
        let dir = std::env::temp_dir().join(format!("realtime-pg-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        let bindir = bindir();
        let data = dir.join("data");
        as_postgres(
            &bindir.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "-N",
            ],
        );
        let pg = Pg {
            dir,
            port: free_port(),
            bindir,
            wal_level,
        };
        pg.pg_start();
        pg
    }

    fn pg_start(&self) {
        let opts = format!(
            "-c wal_level={} -c max_wal_senders=20 -c max_replication_slots=20 -c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off",
            self.wal_level,
            self.port,
            self.dir.display()
        );
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-l",
                self.dir.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) {
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        self.pg_start();
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

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bindir.join("pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}
