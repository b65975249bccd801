//! The binary as a newcomer meets it: `realtime token` mints keys the server accepts,
//! development mode hands out its keys as plain stdout lines after the listening line,
//! a short `JWT_SECRET` is warned about, and an idle server stops at once on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;

use common::{Server, SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_realtime");

/// Runs `realtime <args>` to completion with only `env`; returns (success, stdout, stderr).
async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("RUST_LOG", "warn").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("realtime token finishes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A server process whose stdout and stderr lines are all kept.
struct Proc {
    child: Child,
    stdout: UnboundedReceiver<String>,
    stderr: UnboundedReceiver<String>,
}

impl Proc {
    fn spawn(env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>, echo: bool| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if echo {
                        eprintln!("[server] {l}");
                    }
                    let _ = tx.send(l);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()), false);
        let stderr = lines(Box::new(child.stderr.take().unwrap()), true);
        Proc { child, stdout, stderr }
    }

    async fn stdout_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.stdout.recv())
            .await
            .expect("a stdout line in time")
            .expect("stdout still open")
    }

    /// Reads the listening line; returns the port.
    async fn port(&mut self) -> u16 {
        let line = self.stdout_line().await;
        line.strip_prefix("realtime-rs listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
    }

    fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Sends SIGTERM and returns how long the process took to exit (None: not within 15 s).
    async fn stop_timed(&mut self) -> Option<Duration> {
        let started = Instant::now();
        self.sigterm();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .ok()?
            .ok()?;
        assert!(status.success(), "{status:?}");
        Some(started.elapsed())
    }
}

/// Whether the server on `port` accepts `key` as the WebSocket apikey (it answers a
/// bad key with 401 before the upgrade).
async fn key_accepted(port: u16, key: &str) -> bool {
    let url = format!("ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={key}&vsn=1.0.0");
    tokio_tungstenite::connect_async(url).await.is_ok()
}

#[tokio::test]
async fn token_prints_one_jwt_with_the_asked_claims_that_the_server_accepts() {
    let sub = "6f1f7ab0-1c1e-4f57-9d4e-1f1d3c1a2b3c";
    let (ok, out, err) = run_cli(
        &[
            "token",
            "--role",
            "authenticated",
            "--sub",
            sub,
            "--exp",
            "2h",
            "--claim",
            "tier=free",
            "--claim",
            "n=3",
        ],
        &[("JWT_SECRET", SECRET)],
    )
    .await;
    assert!(ok, "stderr: {err}");
    assert!(err.is_empty(), "nothing to say with a good secret: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {out:?}");
    let token = lines[0];
    let claims = claims_of(token);
    assert_eq!(claims["role"], "authenticated");
    assert_eq!(claims["sub"], sub);
    assert_eq!(claims["tier"], "free");
    assert_eq!(claims["n"], 3);
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - common::now()).abs() <= 5, "iat is now: {claims}");
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 7200);

    let server = Server::start().await; // JWT_SECRET = SECRET
    assert!(
        key_accepted(server.port, token).await,
        "the server accepts the minted token"
    );
    let (ok, other, _) = run_cli(
        &["token", "--role", "anon"],
        &[("JWT_SECRET", "another-secret-of-at-least-32-bytes-long")],
    )
    .await;
    assert!(ok);
    assert!(
        !key_accepted(server.port, other.trim()).await,
        "a token signed with another secret is refused"
    );
}

#[tokio::test]
async fn token_without_a_secret_signs_with_the_dev_secret_and_says_so() {
    let (ok, out, err) = run_cli(&["token", "--role", "service_role", "--exp", "10y"], &[]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("development secret"),
        "stderr names the secret used: {err}"
    );
    let claims = claims_of(out.trim());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3650 * 86_400
    );
    let server = Server::start_with(&[("JWT_SECRET", realtime::cli::DEV_JWT_SECRET)]).await;
    assert!(key_accepted(server.port, out.trim()).await);
}

#[tokio::test]
async fn token_refuses_bad_arguments_and_prints_nothing() {
    for args in [
        &["token", "--role", "anon", "--exp", "1x"][..],
        &["token", "--role", "anon", "--claim", "novalue"][..],
        &["token", "--exp", "1h"][..],
    ] {
        let (ok, out, err) = run_cli(args, &[("JWT_SECRET", SECRET)]).await;
        assert!(!ok, "{args:?} must fail");
        assert!(out.is_empty(), "{args:?}: stdout {out:?}");
        assert!(!err.is_empty(), "{args:?}: says why");
    }
    let (ok, out, err) = run_cli(&["token", "--role", "anon"], &[("JWT_JWKS", r#"{"keys":[]}"#)]).await;
    assert!(!ok && out.is_empty(), "JWKS only: no secret to sign with");
    assert!(err.contains("JWT_SECRET"), "{err}");
}

#[tokio::test]
async fn a_short_jwt_secret_is_warned_about_at_start_and_by_token() {
    let (_server, mut stderr) = Server::start_capturing_stderr(&[("JWT_SECRET", "too-short-secret")]).await;
    let mut seen = Vec::new();
    let warned = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = stderr.recv().await {
            if line.contains("JWT_SECRET is 16 bytes long") && line.contains("WARN") {
                return true;
            }
            seen.push(line);
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(warned, "a warning naming the length; stderr: {seen:#?}");

    let (ok, _, err) = run_cli(&["token", "--role", "anon"], &[("JWT_SECRET", "too-short-secret")]).await;
    assert!(ok);
    assert!(err.contains("16 bytes long"), "{err}");

    // 32 bytes is enough: no warning.
    let (ok, _, err) = run_cli(&["token", "--role", "anon"], &[("JWT_SECRET", &"x".repeat(32))]).await;
    assert!(ok && err.is_empty(), "{err}");
}

#[tokio::test]
async fn development_mode_prints_its_keys_as_plain_stdout_lines_after_the_listening_line() {
    let mut p = Proc::spawn(&[]);
    let port = p.port().await;
    let secret = p.stdout_line().await;
    let anon = p.stdout_line().await;
    let service = p.stdout_line().await;
    let secret = secret.strip_prefix("JWT_SECRET=").expect("JWT_SECRET= line");
    let anon = anon.strip_prefix("ANON_KEY=").expect("ANON_KEY= line");
    let service = service
        .strip_prefix("SERVICE_ROLE_KEY=")
        .expect("SERVICE_ROLE_KEY= line");
    assert!(secret.len() >= 32);
    assert_eq!(claims_of(anon)["role"], "anon");
    assert_eq!(claims_of(service)["role"], "service_role");
    assert!(key_accepted(port, anon).await);
    assert!(key_accepted(port, service).await);
    p.stop_timed().await.expect("exits");
    let mut stderr = Vec::new();
    while let Ok(l) = p.stderr.try_recv() {
        stderr.push(l);
    }
    assert!(
        stderr.iter().all(|l| !l.contains(anon) && !l.contains(secret)),
        "keys are not mixed into the logs: {stderr:#?}"
    );
}

#[tokio::test]
async fn an_idle_server_exits_at_once_on_sigterm() {
    let mut p = Proc::spawn(&[("JWT_SECRET", SECRET)]);
    p.port().await;
    let took = p.stop_timed().await.expect("exits after SIGTERM");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} (SHUTDOWN_TIMEOUT_MS is 5000)"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_http_connection_does_not_hold_shutdown() {
    let mut p = Proc::spawn(&[("JWT_SECRET", SECRET)]);
    let port = p.port().await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = p.stop_timed().await.expect("exits after SIGTERM");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} with an idle keep-alive connection open"
    );
}
