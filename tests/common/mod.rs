//! Test harness: starts the real `realtime` binary on a free port and talks to it over
//! real sockets (WebSocket via tokio-tungstenite, HTTP by hand).
#![allow(dead_code, clippy::unwrap_used)]

pub mod pg;
#[macro_use]
pub mod engine_server;
pub mod nats_server;
pub mod redis_server;
pub mod webhook_receiver;

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-with-at-least-32-characters!!";
const WAIT: Duration = Duration::from_secs(5);

pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// Starts the binary with test-friendly settings plus `env`.
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        Server::spawn(env, false, None).await.0
    }

    /// Starts the binary under an open-file limit of `nofile` (soft and hard, so the
    /// server cannot raise it), capturing stderr like [`Server::start_capturing_stderr`].
    pub async fn start_with_nofile(
        nofile: u64,
        env: &[(&str, &str)],
    ) -> (Server, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (server, rx) = Server::spawn(env, true, Some(nofile)).await;
        (server, rx.expect("stderr is captured"))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// Spawns the binary and waits for its listening line. With `capture`, every stderr
    /// line is also sent on the returned channel (and echoed to this process' stderr).
    async fn spawn(
        env: &[(&str, &str)],
        capture: bool,
        nofile: Option<u64>,
    ) -> (Server, Option<tokio::sync::mpsc::UnboundedReceiver<String>>) {
        // REALTIME_BIN runs the tests against another build (e.g. the previous commit's,
        // to see a new test fail before its fix).
        let bin = std::env::var("REALTIME_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_realtime").to_owned());
        let mut cmd = match nofile {
            // `ulimit -n` sets the soft and the hard limit; exec keeps the pid.
            Some(n) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\"")).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let log = if capture {
            "warn".to_owned()
        } else {
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())
        };
        cmd.env_clear()
            .env("PORT", "0")
            .env("JWT_SECRET", SECRET)
            .env("CONNECT_ERROR_BACKOFF_MS", "0")
            .env("CHANNEL_ERROR_BACKOFF_MS", "0")
            .env("REPLICATION_START_DELAY_MS", "0")
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(if capture { Stdio::piped() } else { Stdio::inherit() })
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn realtime");
        let captured = child.stderr.take().map(|stderr| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[server] {line}");
                    let _ = tx.send(line);
                }
            });
            rx
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("server did not start in time")
            .expect("read stdout")
            .expect("server exited before listening");
        let port = line
            .strip_prefix("realtime-rs listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Server { child, port }, captured)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/realtime/v1/websocket?{query}", self.port)
    }

    /// Connects with a valid anon key on the given vsn ("1.0.0", "2.0.0" or "" for none).
    pub async fn connect(&self, vsn: &str) -> Client {
        let token = token("anon", 3600);
        let query = if vsn.is_empty() {
            format!("apikey={token}")
        } else {
            format!("apikey={token}&vsn={vsn}")
        };
        self.connect_url(&self.ws_url(&query), vsn != "2.0.0")
            .await
            .expect("connect")
    }

    pub async fn connect_url(&self, url: &str, v1: bool) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request()?).await?;
        Ok(Client { ws, v1, next_ref: 1 })
    }

    /// Attempts an upgrade and returns the HTTP status and body of a refusal.
    pub async fn refused_upgrade(&self, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut h = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        h.extend_from_slice(headers);
        let (status, _, body) = self.http("GET", path_and_query, &h, b"").await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A raw HTTP/1.1 request; returns status, lower-cased headers and body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.expect("tcp connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
            .await
            .expect("http timeout")
            .unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("http head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Sends SIGTERM (a graceful shutdown) and waits up to `within` for the process to
    /// exit; returns its exit status.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id()?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .ok()?;
        tokio::time::timeout(within, self.child.wait()).await.ok()?.ok()
    }
}

/// An HS256 JWT for `role`, expiring `exp_in` seconds from now (negative = expired).
pub fn token(role: &str, exp_in: i64) -> String {
    claims_token(json!({"role": role, "exp": now() + exp_in, "sub": format!("user-{role}")}))
}

pub fn claims_token(claims: Value) -> String {
    realtime::auth::sign_hs256(SECRET, &claims).expect("sign")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A received frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Text, normalised to `[join_ref, ref, topic, event, payload]` for both versions
    /// (V1's missing join_ref becomes null), plus the raw text.
    Text(Value, String),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

impl Frame {
    pub fn event(&self) -> &str {
        match self {
            Frame::Text(v, _) => v[3].as_str().unwrap_or_default(),
            _ => "",
        }
    }
    pub fn json(&self) -> &Value {
        match self {
            Frame::Text(v, _) => v,
            other => panic!("expected text, got {other:?}"),
        }
    }
    pub fn payload(&self) -> &Value {
        &self.json()[4]
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    v1: bool,
    next_ref: u64,
}

impl Client {
    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends `[join_ref, ref, topic, event, payload]` in this socket's encoding.
    pub async fn push(&mut self, join_ref: Option<&str>, ref_: Option<&str>, topic: &str, event: &str, payload: Value) {
        let text = if self.v1 {
            json!({"topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": join_ref}).to_string()
        } else {
            json!([join_ref, ref_, topic, event, payload]).to_string()
        };
        self.send_text(&text).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send binary");
    }

    /// Next frame (pings are skipped; tungstenite answers them).
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(WAIT).await.expect("no frame within 5 s")
    }

    pub async fn recv_within(&mut self, d: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match msg {
                None => return Some(Frame::Close(None)),
                Some(Err(_)) => return Some(Frame::Close(None)),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    let arr = if self.v1 {
                        assert!(v.get("join_ref").is_none(), "V1 frames never carry join_ref: {t}");
                        json!([null, v["ref"], v["topic"], v["event"], v["payload"]])
                    } else {
                        v
                    };
                    return Some(Frame::Text(arr, t.to_string()));
                }
                Some(Ok(Message::Binary(b))) => return Some(Frame::Binary(b.to_vec())),
                Some(Ok(Message::Close(c))) => return Some(Frame::Close(c.map(|c| u16::from(c.code)))),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asserts nothing (but pings) arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(f) = self.recv_within(d).await {
            panic!("expected no frame, got {f:?}");
        }
    }

    /// Receives until an event named `event` arrives (others are returned too, for inspection).
    pub async fn recv_event(&mut self, event: &str) -> Frame {
        loop {
            let f = self.recv().await;
            if f.event() == event {
                return f;
            }
            if let Frame::Close(_) = f {
                panic!("closed while waiting for {event}");
            }
        }
    }

    /// Joins `topic` with `config` and the given access token; returns (join_ref, reply frame).
    pub async fn join_with(&mut self, topic: &str, config: Value, access_token: Option<&str>) -> (String, Frame) {
        let join_ref = self.make_ref();
        let mut payload = json!({"config": config});
        if let Some(t) = access_token {
            payload["access_token"] = json!(t);
        }
        self.push(Some(&join_ref), Some(&join_ref), topic, "phx_join", payload)
            .await;
        let reply = self.recv_event("phx_reply").await;
        (join_ref, reply)
    }

    /// Joins with supabase-js' default config and asserts success.
    pub async fn join(&mut self, topic: &str, config: Value) -> String {
        let (join_ref, reply) = self.join_with(topic, config, None).await;
        assert_eq!(reply.payload()["status"], "ok", "join failed: {reply:?}");
        join_ref
    }
}

/// Sends a presence track of `payload` on a joined channel (the reply is not awaited).
pub async fn track(c: &mut Client, join_ref: &str, topic: &str, payload: Value) {
    let ref_ = c.make_ref();
    c.push(
        Some(join_ref),
        Some(&ref_),
        topic,
        "presence",
        json!({"type": "presence", "event": "track", "payload": payload}),
    )
    .await;
}

/// Waits for a `presence_diff` whose `side` ("joins" or "leaves") holds `key`; the first
/// of its metas there.
pub async fn diff_with(c: &mut Client, side: &str, key: &str, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = c.recv_within(left).await?;
        if f.event() == "presence_diff" {
            if let Some(group) = f.payload()[side].get(key) {
                return Some(group["metas"][0].clone());
            }
        }
    }
}

/// A REST call with a service-role key and a JSON body (`null`: none); the status and the
/// JSON answer (`null` when there is none).
pub async fn service_call(s: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let key = token("service_role", 60);
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, resp) = s.http(method, path, &[("apikey", &key)], &body).await;
    (status, serde_json::from_slice(&resp).unwrap_or(Value::Null))
}

/// supabase-js' default join config, merged shallowly with `over`.
pub fn config(over: Value) -> Value {
    let mut c = json!({"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false}, "postgres_changes": [], "private": false});
    if let (Some(c), Some(o)) = (c.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A V2 type-3 user broadcast push.
pub fn user_broadcast_push(
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    json: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = vec![
        3,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        u8::from(json),
    ];
    for s in [join_ref, ref_, topic, event] {
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(payload);
    b
}

impl Server {
    /// Like [`Server::start_with`], but the server's stderr is captured: every line is
    /// sent on the returned channel (and echoed to this process' stderr).
    pub async fn start_capturing_stderr(
        env: &[(&str, &str)],
    ) -> (Server, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (server, rx) = Server::spawn(env, true, None).await;
        let rx = rx.expect("stderr is captured");
        (server, rx)
    }
}
