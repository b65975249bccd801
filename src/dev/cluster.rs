//! A throwaway PostgreSQL cluster for `realtime dev`: `initdb` into a temporary directory,
//! `pg_ctl start` with `wal_level=logical` on a free loopback port (trust auth, no
//! password to copy), stopped and removed when dropped. `initdb` refuses root, so under
//! root every PostgreSQL binary runs as the `postgres` user (or `nobody`) via `runuser`.
//!
//! Blocking `std::process` calls: this runs once, before the server serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{info, warn};

/// Where PostgreSQL server binaries usually are when not on PATH: directories named
/// `<prefix><version>` under each parent, with a `bin/` inside; the newest version wins.
const SEARCH: &[(&str, &str)] = &[
    ("/usr/lib/postgresql", ""),          // Debian/Ubuntu: 15/bin
    ("/opt/homebrew/opt", "postgresql@"), // Homebrew on Apple silicon: postgresql@17/bin
    ("/usr/local/opt", "postgresql@"),    // Homebrew on Intel
    ("/usr", "pgsql-"),                   // PGDG RPMs: /usr/pgsql-16/bin
];

/// What to install when no binaries are found.
const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH nor in \
     /usr/lib/postgresql/*/bin, /opt/homebrew/opt/postgresql@*/bin, /usr/local/opt/postgresql@*/bin, \
     /usr/pgsql-*/bin. Install them (Debian/Ubuntu: `apt install postgresql`; macOS: `brew install \
     postgresql@17`; Fedora/RHEL: `dnf install postgresql-server`) or set DATABASE_URL to a database \
     of yours (see the README, Postgres Changes)";

/// The directory holding `initdb` and `pg_ctl`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                // Debian's /usr/bin/pg_ctl… are wrappers that insist on a cluster config;
                // follow the symlink to the real directory when there is one.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_both(d));
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    for (parent, prefix) in SEARCH {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut candidates: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let version = name.strip_prefix(prefix)?.split('.').next()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_both(dir))
            .collect();
        candidates.sort();
        if let Some((_, dir)) = candidates.pop() {
            return Ok(dir);
        }
    }
    Err(INSTALL_HINT.to_owned())
}

/// A running throwaway cluster. Dropping it stops the server and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    /// The user PostgreSQL runs as when we are root.
    run_as: Option<String>,
    /// Loopback port it listens on.
    pub port: u16,
    keep: bool,
    stopped: bool,
}

impl Cluster {
    /// initdb + start. On failure everything created so far is removed.
    pub fn start(bindir: PathBuf, keep: bool) -> Result<Cluster, String> {
        let run_as = if is_root() { Some(unprivileged_user()?) } else { None };
        let dir = std::env::temp_dir().join(format!(
            "realtime-dev-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cluster = Cluster {
            dir,
            bindir,
            run_as,
            port: free_port()?,
            keep,
            stopped: true,
        };
        if let Some(user) = &cluster.run_as {
            run(Command::new("chown").arg(format!("{user}:")).arg(&cluster.dir), "chown")?;
        }
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "-N",
            ],
        )?;
        cluster.stopped = false;
        cluster.pg_start()?;
        info!(dir = %cluster.dir.display(), port = cluster.port, "development PostgreSQL started");
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth on loopback).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `psql` next to the server binaries, else whatever PATH has.
    pub fn psql(&self) -> String {
        let psql = self.bindir.join("psql");
        if psql.is_file() {
            psql.display().to_string()
        } else {
            "psql".to_owned()
        }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn options(&self) -> String {
        format!(
            "-c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 \
             -c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={}",
            self.port,
            self.dir.display()
        )
    }

    fn pg_start(&self) -> Result<(), String> {
        let log = self.dir.join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &self.options(),
                "start",
            ],
        )
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\nPostgreSQL log ({log}):\n{tail}")
        })
    }

    /// Runs a PostgreSQL binary (as the unprivileged user under root) in a process group
    /// of its own, so a Ctrl-C meant for realtime does not stop the database under it:
    /// realtime stops it after the server has finished.
    fn pg(&self, bin: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bindir.join(bin);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new(runuser());
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        run(&mut cmd, &path.display().to_string())
    }

    /// Stops the server; removes the directory unless kept (then says how to reuse it).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            if let Err(e) = self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", "30", "stop"]) {
                warn!(error = %e, "cannot stop the development PostgreSQL");
            }
        }
        if self.keep {
            eprintln!(
                "realtime dev: kept the cluster in {dir}; start it again with\n  {pg_ctl} -D {data} -l {dir}/server.log -o '{opts}' start\n  then DATABASE_URL={url}",
                dir = self.dir.display(),
                pg_ctl = self.bindir.join("pg_ctl").display(),
                data = self.data(),
                opts = self.options(),
                url = self.url(),
            );
            self.keep = false; // say it once
            self.dir = PathBuf::new();
            return;
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => info!(dir = %self.dir.display(), "development PostgreSQL removed"),
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "cannot remove the development PostgreSQL"),
        }
        self.dir = PathBuf::new();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd`; an error carries its output.
fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `runuser` lives in sbin, which a non-login root shell may not have on PATH.
fn runuser() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("runuser"))
                .find(|f| f.is_file())
        })
        .unwrap_or_default();
    on_path
        .or_else(|| {
            ["/usr/sbin/runuser", "/sbin/runuser"]
                .map(PathBuf::from)
                .into_iter()
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `postgres` when the machine has that user (PostgreSQL packages create it), else `nobody`.
fn unprivileged_user() -> Result<String, String> {
    let exists = |user: &str| {
        Command::new("id")
            .arg(user)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    ["postgres", "nobody"]
        .into_iter()
        .find(|u| exists(u))
        .map(str::to_owned)
        .ok_or_else(|| {
            "running as root, and initdb refuses root: create a `postgres` user or run as another user".to_owned()
        })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}
