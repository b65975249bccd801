//! Servers under test as child processes, and what /proc says about them.

use super::*;

/// A server under test, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub pid: u32,
}

impl Server {
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Starts a server that prints `... listening on <ip>:<port>` as its first stdout line.
pub async fn start_listening(mut cmd: Command, what: &str) -> Res<Server> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| err(format!("start {what}: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| err("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| err(format!("{what} did not start within 30 s")))??
        .ok_or_else(|| err(format!("{what} exited before listening")))?;
    let port = line
        .split_once(" listening on ")
        .and_then(|(_, a)| a.trim().rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| err(format!("{what}: unexpected first line {line:?}")))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = child.id().unwrap_or(0);
    Ok(Server { child, port, pid })
}

/// Starts the real `realtime` binary (PORT=0), with `env` on top of the bench settings.
pub async fn start_realtime(env: &[(&str, &str)]) -> Res<Server> {
    // REALTIME_BIN runs another build (or a wrapper such as a heap profiler) instead.
    let bin = std::env::var("REALTIME_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_realtime").into());
    let mut cmd = Command::new(bin);
    cmd.env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        // Subscribers of a throughput run send nothing after joining.
        .env("IDLE_TIMEOUT_MS", "3600000")
        .env("CONNECT_ERROR_BACKOFF_MS", "0")
        .env("CHANNEL_ERROR_BACKOFF_MS", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_listening(cmd, "realtime").await
}

/// The anon API key for [`SECRET`].
pub fn anon_key() -> Res<String> {
    realtime::auth::sign_hs256(SECRET, &json!({"role": "anon", "exp": 4_000_000_000u64}))
        .map_err(|e| err(format!("sign: {e}")))
}

/// Resident set size of a process in KB, from /proc (Linux; 0 if unknown).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in seconds, from /proc (Linux; clock
/// ticks assumed to be 100 per second, as on every common Linux build).
pub fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15 (1-based overall).
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Raises the soft fd limit as far as the hard one allows (children inherit it); returns it.
pub fn raise_nofile() -> u64 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Number of online CPUs, for the record.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// 1-minute load average, for the record (how busy the machine was).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Starts `redis-server` on a free loopback port: (child, port).
pub async fn start_redis() -> Res<(tokio::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    Ok((start_engine(cmd, &bin, port).await?, port))
}

/// Starts `nats-server` on a free loopback port, with JetStream in a temporary store
/// (under the system's temporary directory, named after the port): (child, port).
pub async fn start_nats() -> Res<(tokio::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let bin =
        std::env::var("NATS_SERVER").unwrap_or_else(|_| match std::path::Path::new("/usr/sbin/nats-server").exists() {
            true => "/usr/sbin/nats-server".into(),
            false => "nats-server".into(),
        });
    let mut cmd = Command::new(&bin);
    let store = std::env::temp_dir().join(format!("realtime-bench-nats-{port}"));
    // A store left by an earlier run on this port would replay its history.
    let _ = std::fs::remove_dir_all(&store);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-js")
        .arg("-sd")
        .arg(&store);
    Ok((start_engine(cmd, &bin, port).await?, port))
}

/// Starts a cluster engine (`redis` or `nats`): (child, CLUSTER_URL).
pub async fn start_engine_named(engine: &str) -> Res<(tokio::process::Child, String)> {
    match engine {
        "redis" => start_redis()
            .await
            .map(|(c, port)| (c, format!("redis://127.0.0.1:{port}"))),
        "nats" => start_nats()
            .await
            .map(|(c, port)| (c, format!("nats://127.0.0.1:{port}"))),
        other => Err(err(format!("--engine {other}: expected redis or nats"))),
    }
}

async fn start_engine(mut cmd: Command, bin: &str, port: u16) -> Res<tokio::process::Child> {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start {bin}: {e}")))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if std::time::Instant::now() > deadline {
            return Err(err(format!("{bin} did not listen within 10 s")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(child)
}
