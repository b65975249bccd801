//! A throwaway PostgreSQL cluster for integration tests (recipe: shared/research/wal-rls.md §4.1).
//!
//! The one PostgreSQL harness of the workspace: `wal/tests/`, `tests/` (through
//! `tests/common/pg.rs`) and the Postgres Changes bench all start their clusters here.
//!
//! ```ignore
//! use realtime_test_pg::{PgCluster, PasswordAuth};
//!
//! let pg = PgCluster::start();                        // initdb + start, wal_level=logical
//! pg.execute("create table t (id int primary key)").await;
//! let url = pg.url();                                 // postgres://postgres@127.0.0.1:<port>/postgres
//! let cfg = pg.socket_config();                       // the same over the Unix socket
//! pg.create_password_role("alice", "s3cret", PasswordAuth::Scram).await;
//! // dropped: `pg_ctl -m immediate stop`, then the temp dir is removed
//! ```
//!
//! * Each cluster lives in its own temp dir (data dir, server log and Unix socket), listens on
//!   127.0.0.1 on a free port, trusts every local/loopback connection (`initdb --auth=trust`),
//!   runs with `wal_level=logical`, 20 WAL senders / slots, `fsync=off` and `log_connections`.
//! * Works as root (CI): the dir is chowned to `postgres` and the server binaries run through
//!   `runuser -u postgres --` (initdb refuses root). As a normal user they run directly.
//! * Binaries: `$PG_BINDIR`, else `pg_config --bindir`, else the usual Debian/local paths.
//! * Extra settings (e.g. `wal_sender_timeout`) go to [`PgCluster::start_with`]; they are
//!   appended to `postgresql.conf`, so they survive [`PgCluster::restart`].
//! * Everything panics on failure (it is test support) and every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How a password role authenticates over TCP (both store the password accordingly and force
/// the method in `pg_hba.conf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAuth {
    /// `password_encryption = 'scram-sha-256'` and `scram-sha-256` in pg_hba.
    Scram,
    /// `password_encryption = 'md5'` and `md5` in pg_hba (a real MD5 challenge).
    Md5,
}

impl PasswordAuth {
    fn method(self) -> &'static str {
        match self {
            PasswordAuth::Scram => "scram-sha-256",
            PasswordAuth::Md5 => "md5",
        }
    }
}

/// A running throwaway cluster; stopped (`-m immediate`) and deleted on drop.
pub struct PgCluster {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    bindir: PathBuf,
    as_postgres: bool,
    running: bool,
}

impl PgCluster {
    /// initdb + start with the default test settings.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// initdb + start with extra `postgresql.conf` settings, e.g.
    /// `&[("wal_sender_timeout", "2s")]`. Values are quoted for you.
    pub fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let dir = unique_temp_dir();
        // The dir's owner is our effective uid: no libc needed to know whether we are root.
        let as_postgres = std::fs::metadata(&dir).unwrap().uid() == 0;
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let data = dir.join("data");
        let mut pg = PgCluster {
            dir,
            data,
            port: 0,
            bindir: bindir(),
            as_postgres,
            running: false,
        };

        let t = Instant::now();
        let data_str = pg.data.to_str().unwrap().to_owned();
        pg.pg(
            "initdb",
            &[
                "-D",
                &data_str,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let mut conf = String::from("\n# realtime-rs test harness\n");
        let socket_dir = pg.dir.to_str().unwrap().to_owned();
        let defaults: [(&str, &str); 7] = [
            ("wal_level", "logical"),
            ("max_wal_senders", "20"),
            ("max_replication_slots", "20"),
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", &socket_dir),
            ("fsync", "off"),
            ("log_connections", "on"),
        ];
        for (k, v) in defaults.iter().chain(settings.iter()) {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let conf_path = pg.data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();

        // A free port can be taken between probing and binding (parallel tests): retry.
        for attempt in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                eprintln!(
                    "[pg] cluster {} up on port {} in {:?}",
                    pg.dir.display(),
                    pg.port,
                    t.elapsed()
                );
                return pg;
            }
            eprintln!("[pg] start attempt {attempt} on port {} failed; retrying", pg.port);
        }
        panic!("could not start PostgreSQL; log:\n{}", pg.server_log());
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the Unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (pg_hba.conf, postgresql.conf).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// URL for a password role created by [`PgCluster::create_password_role`].
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/postgres", self.port)
    }

    /// Config for the Unix socket, user `postgres`, database `postgres`.
    pub fn socket_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        c
    }

    /// An ordinary SQL connection as `postgres` over the Unix socket (the connection task is
    /// spawned on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let config = self.socket_config();
        let fut = config.connect(tokio_postgres::NoTls);
        let (client, conn) = tokio::time::timeout(Duration::from_secs(15), fut)
            .await
            .expect("timed out connecting to the test cluster")
            .expect("connect to the test cluster");
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("[pg] client connection ended: {e}");
            }
        });
        client
    }

    /// Runs one or more SQL statements (simple protocol) on a fresh connection.
    pub async fn execute(&self, sql: &str) {
        let client = self.client().await;
        tokio::time::timeout(Duration::from_secs(30), client.batch_execute(sql))
            .await
            .unwrap_or_else(|_| panic!("timed out running {sql:?}"))
            .unwrap_or_else(|e| panic!("{sql:?} failed: {e}"));
    }

    /// First column of the first row as text (`None` for no row or NULL). Cast in SQL
    /// (`::text`) for non-text values.
    pub async fn query_text(&self, sql: &str) -> Option<String> {
        let client = self.client().await;
        let rows = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
            .await
            .unwrap_or_else(|_| panic!("timed out running {sql:?}"))
            .unwrap_or_else(|e| panic!("{sql:?} failed: {e}"));
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })?
    }

    /// Polls `sql` (first column as text) until it equals `expected` or `timeout` passes.
    pub async fn wait_for_text(&self, sql: &str, expected: Option<&str>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query_text(sql).await;
            if got.as_deref() == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql:?}: still {got:?} after {timeout:?}, wanted {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a LOGIN REPLICATION role whose password is stored for `auth` and forces that
    /// method for it on 127.0.0.1 (normal and replication connections), then reloads and
    /// waits until the server enforces it.
    pub async fn create_password_role(&self, name: &str, password: &str, auth: PasswordAuth) {
        let encryption = match auth {
            PasswordAuth::Scram => "scram-sha-256",
            PasswordAuth::Md5 => "md5",
        };
        self.execute(&format!(
            "set password_encryption = '{encryption}';
             create role \"{name}\" with login replication password '{}';
             grant all on schema public to \"{name}\";",
            password.replace('\'', "''")
        ))
        .await;
        // First matching line wins, so the role's lines go before initdb's trust lines.
        let hba = self.data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        let method = auth.method();
        std::fs::write(
            &hba,
            format!("host all {name} 127.0.0.1/32 {method}\nhost replication {name} 127.0.0.1/32 {method}\n{old}"),
        )
        .unwrap();
        self.reload();

        // The postmaster re-reads pg_hba asynchronously: wait until a wrong password is
        // refused, otherwise a test could pass through the old trust line.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.url_for(name, "definitely-wrong");
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await;
            match res {
                Ok(Err(e)) if e.as_db_error().map(|d| d.code().code()) == Some("28P01") => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "pg_hba change for {name} not in effect after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl reload` (re-reads pg_hba.conf and reloadable settings).
    pub fn reload(&self) {
        let data = self.data.to_str().unwrap().to_owned();
        self.pg("pg_ctl", &["-D", &data, "reload"]);
    }

    /// Stops (`-m fast`, a clean shutdown with a checkpoint) and starts again on the same data
    /// dir and port. Existing connections are dropped.
    pub fn restart(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"]);
        self.running = false;
        assert!(self.try_start(), "restart failed; log:\n{}", self.server_log());
    }

    /// Stops with a clean shutdown (`-m fast`); [`PgCluster::start_again`] brings it back on
    /// the same data dir and port. Existing connections are dropped.
    pub fn stop_fast(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"]);
        self.running = false;
    }

    /// Starts a stopped cluster again on the same data dir and port.
    pub fn start_again(&mut self) {
        assert!(self.try_start(), "start failed; log:\n{}", self.server_log());
    }

    /// Stops immediately (no checkpoint). Called by Drop; idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data.to_str().unwrap().to_owned();
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"]);
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("[pg] pg_ctl stop failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("[pg] pg_ctl stop could not run: {e}"),
        }
        self.running = false;
    }

    /// The server log so far (for assertions and panic messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn try_start(&mut self) -> bool {
        let data = self.data.to_str().unwrap().to_owned();
        let log = self.dir.join("server.log").to_str().unwrap().to_owned();
        let port = format!("-p {}", self.port);
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &port, "start"]);
        let out = cmd.output().expect("run pg_ctl");
        self.running = out.status.success();
        if !self.running {
            eprintln!("[pg] pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.running
    }

    /// A command for a server binary, as `postgres` when we are root.
    fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg(&self, bin: &str, args: &[&str]) {
        let mut cmd = self.command(bin);
        cmd.args(args);
        run(&mut cmd);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("[pg] could not remove {}: {e}", self.dir.display());
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bindir() -> PathBuf {
    let has_tools = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Some(d) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        assert!(has_tools(&d), "PG_BINDIR={} has no initdb/pg_ctl", d.display());
        return d;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&d) {
            return d;
        }
    }
    for d in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"] {
        if has_tools(Path::new(d)) {
            return PathBuf::from(d);
        }
    }
    panic!("PostgreSQL server binaries not found (set PG_BINDIR or install postgresql-15)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A new empty dir under the system temp dir. Short names: the socket path must stay under
/// the ~107-byte `sun_path` limit.
fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("rtpg-{}-{n}-{nanos:x}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    dir
}
