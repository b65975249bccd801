//! A throwaway `nats-server` on a free loopback port, for the cluster tests, with its
//! monitoring endpoint (to count subscriptions) and JetStream in a temporary store (kept
//! across a restart, as a real server's); stopped (kill -9) and its store removed when
//! dropped. `.ci/run` installs Debian's nats-server.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    monitor: u16,
    store: std::path::PathBuf,
    jetstream: bool,
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Nats {
    /// Starts a server on a free port.
    pub async fn start() -> Nats {
        Nats::start_with(true).await
    }

    /// Starts a server on a free port without JetStream, as a user's server may run.
    pub async fn start_without_jetstream() -> Nats {
        Nats::start_with(false).await
    }

    async fn start_with(jetstream: bool) -> Nats {
        let port = free_port();
        let mut nats = Nats {
            child: None,
            port,
            monitor: free_port(),
            store: std::env::temp_dir().join(format!("realtime-test-nats-{}-{port}", std::process::id())),
            jetstream,
        };
        nats.start_again().await;
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kills the server (SIGKILL), as a crash or a network cut would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Removes JetStream's store (while the server is down: a restart then starts empty,
    /// as a server without persistent storage would).
    pub fn wipe_store(&self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }

    /// Starts the server again on the same port (JetStream's store is kept).
    pub async fn start_again(&mut self) {
        // Debian installs it in /usr/sbin, which is not on every PATH.
        let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| {
            let sbin = "/usr/sbin/nats-server";
            match std::path::Path::new(sbin).exists() {
                true => sbin.into(),
                false => "nats-server".into(),
            }
        });
        let mut command = Command::new(&bin);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(&self.store);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (install Debian's nats-server, or set NATS_SERVER): {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err()
            || TcpStream::connect(("127.0.0.1", self.monitor)).await.is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of subscriptions (nodes) on the subject of an engine channel.
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).await.unwrap();
        let req = "GET /subsz?subs=1&limit=100000 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).expect("subsz is JSON");
        let subject = subject(channel);
        v["subscriptions_list"]
            .as_array()
            .map(|subs| subs.iter().filter(|s| s["subject"] == subject.as_str()).count() as i64)
            .unwrap_or(0)
    }
}

/// The engine's channel → subject escaping (bytes outside `[A-Za-z0-9_:-]` as `%XX`),
/// written again here so the test checks it rather than reuses it.
fn subject(channel: &str) -> String {
    channel
        .bytes()
        .map(|b| match b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-') {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect()
}
