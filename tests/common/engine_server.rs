//! The cluster engine a test runs against: the same cluster tests run over `redis-server`
//! and over `nats-server`.
#![allow(dead_code)]

use super::nats_server::Nats;
use super::redis_server::Redis;

pub enum EngineServer {
    Redis(Redis),
    Nats(Nats),
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Redis,
    Nats,
}

impl EngineServer {
    pub async fn start(kind: Kind) -> EngineServer {
        match kind {
            Kind::Redis => EngineServer::Redis(Redis::start().await),
            Kind::Nats => EngineServer::Nats(Nats::start().await),
        }
    }

    /// The node's `CLUSTER_URL`.
    pub fn url(&self) -> String {
        match self {
            EngineServer::Redis(r) => r.url(),
            EngineServer::Nats(n) => n.url(),
        }
    }

    pub async fn kill(&mut self) {
        match self {
            EngineServer::Redis(r) => r.kill().await,
            EngineServer::Nats(n) => n.kill().await,
        }
    }

    pub async fn start_again(&mut self) {
        match self {
            EngineServer::Redis(r) => r.start_again().await,
            EngineServer::Nats(n) => n.start_again().await,
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is served.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = match self {
            EngineServer::Redis(r) => r.pid(),
            EngineServer::Nats(n) => n.pid(),
        }
        .expect("the engine runs");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Number of nodes subscribed to an engine channel.
    pub async fn subscribers(&self, channel: &str) -> i64 {
        match self {
            EngineServer::Redis(r) => r.subscribers(channel).await,
            EngineServer::Nats(n) => n.subscribers(channel).await,
        }
    }
}

/// Runs each listed `async fn name(kind: Kind)` of the test file once per engine, as
/// `redis::name` and `nats::name`.
#[allow(unused_macros)]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name(super::Kind::Redis).await
            })*
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name(super::Kind::Nats).await
            })*
        }
    };
}
