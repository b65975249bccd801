//! The shared load generator of the benches (each bench includes it with `#[path]`).
//!
//! tokio + fastwebsockets clients speaking the real protocols: Phoenix (Supabase Realtime
//! vsn 1.0.0 JSON objects / 2.0.0 arrays + binary broadcasts), the bare fan-out server's
//! "no protocol", and Pusher (Sockudo). Latency is measured by embedding the send time
//! (`{"_s":<step>,"_t":<ns since the generator's epoch>}`) in every payload; receivers
//! record `now - _t` into sharded HDR histograms.
//!
//! Every bench prints a one-line `summary:` and a one-line JSON record, appended to the
//! file named by `BENCH_RESULTS` when set.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{handshake, Frame, OpCode, Payload, WebSocket, WebSocketRead, WebSocketWrite};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, Error>;

pub fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}

pub const SECRET: &str = "bench-secret-bench-secret-bench-secret!!";

// ---------------------------------------------------------------- parameters

/// `--name value` flags, each also settable as env `BENCH_NAME` (flags win).
pub struct Params {
    flags: HashMap<String, String>,
}

impl Params {
    pub fn parse() -> Params {
        let mut flags = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                match it.peek() {
                    Some(v) if !v.starts_with("--") => {
                        let v = it.next().unwrap_or_default();
                        flags.insert(name.to_owned(), v);
                    }
                    _ => {
                        flags.insert(name.to_owned(), "true".to_owned());
                    }
                }
            }
        }
        Params { flags }
    }

    pub fn raw(&self, name: &str) -> Option<String> {
        self.flags
            .get(name)
            .cloned()
            .or_else(|| std::env::var(format!("BENCH_{}", name.to_uppercase().replace('-', "_"))).ok())
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| err(format!("--{name}: cannot parse {v:?}"))),
        }
    }

    pub fn list<T: FromStr>(&self, name: &str) -> Res<Option<Vec<T>>> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => v
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .map_err(|_| err(format!("--{name}: cannot parse {x:?}")))
                })
                .collect::<Res<Vec<T>>>()
                .map(Some),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.raw(name).is_some_and(|v| v != "false" && v != "0")
    }
}

// ---------------------------------------------------------------- clock

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the generator's epoch (one process, one monotonic clock).
pub fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------- processes

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

// ---------------------------------------------------------------- WebSocket clients

pub type Io = TokioIo<Upgraded>;
pub type Ws = WebSocket<Io>;
pub type Reader = WebSocketRead<ReadHalf<Io>>;
pub type Writer = Arc<tokio::sync::Mutex<WebSocketWrite<WriteHalf<Io>>>>;

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket to `127.0.0.1:port` + `path_and_query`, optionally from a given
/// source address (to spread many clients over 127.0.0.0/8).
pub async fn ws_connect(port: u16, path_and_query: &str, bind: Option<Ipv4Addr>) -> Res<Ws> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let stream = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let s = TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            s.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{port}{path_and_query}"))
        .header("Host", format!("127.0.0.1:{port}"))
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await?;
    Ok(ws)
}

/// The source address of client `i` when spreading: 1,000 clients per address,
/// 127.10.0.1, 127.10.0.2, … (each address has its own ephemeral port range).
pub fn spread_addr(i: usize) -> Ipv4Addr {
    let a = i / 1000;
    Ipv4Addr::new(
        127,
        10 + (a / 62_500) as u8,
        ((a / 250) % 250) as u8,
        (a % 250 + 1) as u8,
    )
}

/// Splits a connected socket: the reader stays with the caller, the writer is shared
/// (heartbeats, pongs, publishing).
pub fn split(ws: Ws) -> (Reader, Writer) {
    let (r, w) = ws.split(tokio::io::split);
    (r, Arc::new(tokio::sync::Mutex::new(w)))
}

/// Reads the next data frame, answering pings through `writer`.
/// Returns `None` when the connection is closed.
pub async fn next_frame(reader: &mut Reader, writer: &Writer) -> Res<Option<(OpCode, Vec<u8>)>> {
    loop {
        let w = writer.clone();
        let mut send = move |f: Frame<'_>| {
            let w = w.clone();
            let owned = Frame::new(true, f.opcode, None, Payload::Owned(f.payload.to_vec()));
            async move { w.lock().await.write_frame(owned).await }
        };
        let frame = reader.read_frame(&mut send).await?;
        match frame.opcode {
            OpCode::Close => return Ok(None),
            OpCode::Text | OpCode::Binary => return Ok(Some((frame.opcode, frame.payload.to_vec()))),
            _ => continue,
        }
    }
}

pub async fn send_text(writer: &Writer, text: String) -> Res<()> {
    writer
        .lock()
        .await
        .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await?;
    Ok(())
}

pub async fn send_frame(writer: &Writer, opcode: OpCode, bytes: Vec<u8>) -> Res<()> {
    writer
        .lock()
        .await
        .write_frame(Frame::new(true, opcode, None, Payload::Owned(bytes)))
        .await?;
    Ok(())
}

/// Reads a whole data frame from an unsplit socket (pings answered by fastwebsockets).
pub async fn read_data(ws: &mut Ws) -> Res<(OpCode, Vec<u8>)> {
    loop {
        let f = ws.read_frame().await?;
        match f.opcode {
            OpCode::Close => return Err(err("closed")),
            OpCode::Text | OpCode::Binary => return Ok((f.opcode, f.payload.to_vec())),
            _ => continue,
        }
    }
}

// ---------------------------------------------------------------- Phoenix (Supabase Realtime)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl FromStr for Vsn {
    type Err = Error;
    fn from_str(s: &str) -> Res<Vsn> {
        match s {
            "1" | "1.0.0" => Ok(Vsn::V1),
            "2" | "2.0.0" => Ok(Vsn::V2),
            _ => Err(err(format!("vsn {s:?}: 1.0.0 or 2.0.0"))),
        }
    }
}

impl Vsn {
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

pub fn phoenix_path(key: &str, vsn: Vsn) -> String {
    format!("/realtime/v1/websocket?apikey={key}&vsn={}", vsn.as_str())
}

/// A client → server message in the socket's encoding.
pub fn phoenix_text(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    match vsn {
        Vsn::V1 => {
            json!({"topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": join_ref}).to_string()
        }
        Vsn::V2 => json!([join_ref, ref_, topic, event, payload]).to_string(),
    }
}

/// supabase-js' default join config, presence optionally enabled with a key.
pub fn join_config(presence_key: Option<&str>) -> Value {
    json!({
        "config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": presence_key.unwrap_or(""), "enabled": presence_key.is_some()},
            "postgres_changes": [],
            "private": false
        }
    })
}

/// A received Phoenix message normalised to `[join_ref, ref, topic, event, payload]`.
pub struct Msg {
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

pub fn parse_phoenix(vsn: Vsn, text: &[u8]) -> Option<Msg> {
    let v: Value = serde_json::from_slice(text).ok()?;
    let (r, topic, event, payload) = match vsn {
        Vsn::V2 => {
            let a = v.as_array()?;
            (
                a.get(1)?.clone(),
                a.get(2)?.clone(),
                a.get(3)?.clone(),
                a.get(4)?.clone(),
            )
        }
        Vsn::V1 => (
            v["ref"].clone(),
            v["topic"].clone(),
            v["event"].clone(),
            v["payload"].clone(),
        ),
    };
    Some(Msg {
        ref_: r.as_str().map(str::to_owned),
        topic: topic.as_str()?.to_owned(),
        event: event.as_str()?.to_owned(),
        payload,
    })
}

/// Joins `topic` on an unsplit socket and waits for an `ok` reply.
pub async fn phoenix_join(ws: &mut Ws, vsn: Vsn, join_ref: &str, topic: &str, payload: &Value) -> Res<()> {
    let text = phoenix_text(vsn, Some(join_ref), Some(join_ref), topic, "phx_join", payload);
    ws.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await?;
    loop {
        let (op, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
            .await
            .map_err(|_| err(format!("no join reply for {topic} within 30 s")))??;
        if op != OpCode::Text {
            continue;
        }
        if let Some(m) = parse_phoenix(vsn, &data) {
            if m.event == "phx_reply" && m.ref_.as_deref() == Some(join_ref) {
                if m.payload["status"] == "ok" {
                    return Ok(());
                }
                return Err(err(format!("join {topic} refused: {}", m.payload)));
            }
        }
    }
}

/// A user broadcast push with a JSON payload: V2 → binary type 3, V1 → text.
pub fn phoenix_broadcast(vsn: Vsn, join_ref: &str, topic: &str, event: &str, payload_json: &str) -> (OpCode, Vec<u8>) {
    match vsn {
        Vsn::V2 => {
            let mut b = Vec::with_capacity(7 + join_ref.len() + topic.len() + event.len() + payload_json.len());
            b.extend_from_slice(&[3, join_ref.len() as u8, 0, topic.len() as u8, event.len() as u8, 0, 1]);
            b.extend_from_slice(join_ref.as_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(event.as_bytes());
            b.extend_from_slice(payload_json.as_bytes());
            (OpCode::Binary, b)
        }
        Vsn::V1 => {
            let text = format!(
                "{{\"topic\":{},\"event\":\"broadcast\",\"payload\":{{\"type\":\"broadcast\",\"event\":{},\"payload\":{payload_json}}},\"ref\":null,\"join_ref\":{}}}",
                Value::from(topic),
                Value::from(event),
                Value::from(join_ref)
            );
            (OpCode::Text, text.into_bytes())
        }
    }
}

pub fn heartbeat(vsn: Vsn, ref_: u64) -> String {
    phoenix_text(vsn, None, Some(&ref_.to_string()), "phoenix", "heartbeat", &json!({}))
}

/// Sends a Phoenix heartbeat every `every` until the writer fails or `stop` is set.
pub fn spawn_heartbeats(writer: Writer, vsn: Vsn, every: Duration, stop: Arc<AtomicBool>) {
    // A weak handle: the socket closes when its reader is done, not at the next beat.
    let writer = Arc::downgrade(&writer);
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let Some(writer) = writer.upgrade() else { return };
            if stop.load(Ordering::Relaxed) {
                return;
            }
            n += 1;
            if send_text(&writer, heartbeat(vsn, n)).await.is_err() {
                return;
            }
        }
    });
}

// ---------------------------------------------------------------- stamps

/// The payload every publisher sends: step number, send time, optional padding.
pub fn stamp(step: u32, t_ns: u64, pad: usize) -> String {
    if pad == 0 {
        format!("{{\"_s\":{step},\"_t\":{t_ns}}}")
    } else {
        format!("{{\"_s\":{step},\"_t\":{t_ns},\"p\":\"{}\"}}", "x".repeat(pad))
    }
}

/// Finds `"_s":N` … `"_t":N` anywhere in a frame (binary header, V1/V2 JSON, Pusher data
/// whether an object or a string with escaped quotes).
pub fn read_stamp(b: &[u8]) -> Option<(u32, u64)> {
    let i = find(b, b"_s")?;
    let (s, rest) = number_after(&b[i + 2..])?;
    let j = find(rest, b"_t")?;
    let (t, _) = number_after(&rest[j + 2..])?;
    Some((u32::try_from(s).ok()?, t))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Skips `"`, `\` and `:` then reads decimal digits.
fn number_after(b: &[u8]) -> Option<(u64, &[u8])> {
    let start = b.iter().position(|c| !matches!(c, b'"' | b'\\' | b':' | b' '))?;
    let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n = std::str::from_utf8(&b[start..start + digits]).ok()?.parse().ok()?;
    Some((n, &b[start + digits..]))
}

// ---------------------------------------------------------------- latency recording

const SHARDS: usize = 64;

struct Shard {
    hist: Histogram<u64>,
    count: u64,
    last_ns: u64,
}

/// Latencies in microseconds, in shards so receivers rarely contend.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    step: AtomicU32,
    pub errors: AtomicU64,
    pub closed: AtomicU64,
}

pub struct Collected {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub last_ns: u64,
}

impl Recorder {
    pub fn new() -> Res<Arc<Recorder>> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(Mutex::new(Shard {
                hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
                count: 0,
                last_ns: 0,
            }));
        }
        Ok(Arc::new(Recorder {
            shards,
            step: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }))
    }

    /// Records a delivery stamped `(step, sent_ns)` received now by receiver `who`.
    pub fn record(&self, who: usize, step: u32, sent_ns: u64) {
        if step != self.step.load(Ordering::Acquire) {
            return; // a straggler of an earlier step
        }
        let now = now_ns();
        let us = (now.saturating_sub(sent_ns) / 1_000).max(1);
        if let Ok(mut s) = self.shards[who % SHARDS].lock() {
            s.hist.saturating_record(us);
            s.count += 1;
            s.last_ns = s.last_ns.max(now);
        }
    }

    /// Starts a new step: clears the shards.
    pub fn begin(&self, step: u32) {
        self.step.store(step, Ordering::Release);
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.hist.reset();
                s.count = 0;
                s.last_ns = 0;
            }
        }
    }

    pub fn delivered(&self) -> u64 {
        self.shards.iter().filter_map(|s| s.lock().ok().map(|s| s.count)).sum()
    }

    pub fn collect(&self) -> Res<Collected> {
        let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
        let (mut count, mut last_ns) = (0, 0);
        for s in &self.shards {
            let s = s.lock().map_err(|_| err("poisoned"))?;
            hist.add(&s.hist)?;
            count += s.count;
            last_ns = last_ns.max(s.last_ns);
        }
        Ok(Collected { hist, count, last_ns })
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

// ---------------------------------------------------------------- results

/// Prints the summary line and the JSON record; appends the record to `$BENCH_RESULTS`.
pub fn report(summary: &str, mut record: Value) -> Res<()> {
    if let Some(o) = record.as_object_mut() {
        o.entry("cpus").or_insert(json!(cpus()));
        o.entry("loadavg_1m").or_insert(json!(loadavg()));
        o.entry("unix_time").or_insert(json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)));
        if let Ok(c) = std::env::var("BENCH_COMMIT") {
            o.entry("commit").or_insert(json!(c));
        }
    }
    println!("summary: {summary}");
    let line = record.to_string();
    println!("{line}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        if !path.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- fan-out workload

/// How the generator speaks to the server under test.
#[derive(Clone)]
pub enum Proto {
    /// Supabase Realtime: join each topic, publish user broadcasts.
    Phoenix { vsn: Vsn, key: String },
    /// The bare fan-out server: no join; it forwards the publisher's frames verbatim.
    /// The generator sends it the same frames as realtime-rs vsn 2.0.0.
    Bare,
    /// Pusher (Sockudo): private channel + client events, HMAC-signed subscriptions.
    Pusher { key: String, secret: String },
}

impl Proto {
    pub fn name(&self) -> String {
        match self {
            Proto::Phoenix { vsn, .. } => format!("realtime-rs vsn {}", vsn.as_str()),
            Proto::Bare => "bare fastwebsockets".into(),
            Proto::Pusher { .. } => "sockudo (pusher)".into(),
        }
    }

    fn topic(&self, i: usize) -> String {
        match self {
            Proto::Pusher { .. } => format!("private-bench-{i}"),
            _ => format!("realtime:bench-{i}"),
        }
    }

    fn path(&self, topic: &str) -> String {
        match self {
            Proto::Phoenix { vsn, key } => phoenix_path(key, *vsn),
            Proto::Bare => format!("/ws?topic={topic}"),
            Proto::Pusher { key, .. } => format!("/app/{key}?protocol=7&client=rs-bench&version=1.0"),
        }
    }

    /// Connects and subscribes to `topics`; returns the socket and per-topic join refs.
    async fn open(&self, port: u16, topics: &[String], bind: Option<Ipv4Addr>) -> Res<Ws> {
        let first = topics.first().map(String::as_str).unwrap_or("");
        let mut ws = ws_connect(port, &self.path(first), bind).await?;
        match self {
            Proto::Phoenix { vsn, .. } => {
                for (i, t) in topics.iter().enumerate() {
                    phoenix_join(&mut ws, *vsn, &(i + 1).to_string(), t, &join_config(None)).await?;
                }
            }
            Proto::Bare => {}
            Proto::Pusher { key, secret } => {
                let socket_id = pusher_socket_id(&mut ws).await?;
                for t in topics {
                    pusher_subscribe(&mut ws, key, secret, &socket_id, t).await?;
                }
            }
        }
        Ok(ws)
    }

    /// The frame publishing `payload_json` to topic `i` of `topics` (join_ref = i + 1).
    fn publish(&self, topic: &str, join_ref: usize, payload_json: &str) -> (OpCode, Vec<u8>) {
        match self {
            Proto::Phoenix { vsn, .. } => phoenix_broadcast(*vsn, &join_ref.to_string(), topic, "m", payload_json),
            Proto::Bare => phoenix_broadcast(Vsn::V2, &join_ref.to_string(), topic, "m", payload_json),
            Proto::Pusher { .. } => (
                OpCode::Text,
                format!(
                    "{{\"event\":\"client-m\",\"channel\":{},\"data\":{payload_json}}}",
                    Value::from(topic)
                )
                .into_bytes(),
            ),
        }
    }

    /// What a receiver must answer to an application-level frame, if anything.
    fn answer(&self, op: OpCode, data: &[u8]) -> Option<String> {
        match self {
            Proto::Pusher { .. } if op == OpCode::Text && find(data, b"pusher:ping").is_some() => {
                Some("{\"event\":\"pusher:pong\",\"data\":{}}".into())
            }
            _ => None,
        }
    }

    fn heartbeats(&self) -> Option<Vsn> {
        match self {
            Proto::Phoenix { vsn, .. } => Some(*vsn),
            _ => None,
        }
    }
}

async fn pusher_socket_id(ws: &mut Ws) -> Res<String> {
    let (_, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
        .await
        .map_err(|_| err("no pusher:connection_established within 30 s"))??;
    let v: Value = serde_json::from_slice(&data)?;
    if v["event"] != "pusher:connection_established" {
        return Err(err(format!("expected connection_established, got {v}")));
    }
    let inner: Value = match &v["data"] {
        Value::String(s) => serde_json::from_str(s)?,
        other => other.clone(),
    };
    inner["socket_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| err(format!("no socket_id in {v}")))
}

/// `key:hex(HMAC-SHA256(secret, "socket_id:channel"))`, Pusher's private-channel auth.
pub fn pusher_auth(key: &str, secret: &str, socket_id: &str, channel: &str) -> Res<String> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| err(e.to_string()))?;
    mac.update(format!("{socket_id}:{channel}").as_bytes());
    let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{key}:{sig}"))
}

async fn pusher_subscribe(ws: &mut Ws, key: &str, secret: &str, socket_id: &str, channel: &str) -> Res<()> {
    let auth = pusher_auth(key, secret, socket_id, channel)?;
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}).to_string();
    ws.write_frame(Frame::text(Payload::Owned(msg.into_bytes()))).await?;
    loop {
        let (_, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
            .await
            .map_err(|_| err(format!("no subscription reply for {channel} within 30 s")))??;
        let v: Value = serde_json::from_slice(&data)?;
        match v["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") if v["channel"] == channel => return Ok(()),
            Some("pusher:error") | Some("pusher:subscription_error") => {
                return Err(err(format!("subscribe {channel}: {v}")))
            }
            _ => {}
        }
    }
}

/// The fan-out workload: `topics` topics × `subscribers` each, one publisher socket per
/// topic group, publish rate rising step by step.
#[derive(Clone)]
pub struct Fanout {
    pub topics: usize,
    pub subscribers: usize,
    pub publishers: usize,
    pub step_secs: f64,
    pub rates: Vec<u64>,
    pub stop_p99_ms: f64,
    pub ok_p99_ms: f64,
    pub pad: usize,
    pub connect_parallel: usize,
    /// Seconds of publishing at the first rate before the first step (not recorded).
    pub warmup_secs: f64,
}

impl Fanout {
    /// Reads the common flags; `default_subs` is per topic.
    pub fn from_params(p: &Params, default_topics: usize, default_subs: usize) -> Res<Fanout> {
        let topics: usize = p.get("topics", default_topics)?;
        let start: f64 = p.get("start-rate", 100.0)?;
        let growth: f64 = p.get("growth", 1.25)?;
        let max_rate: f64 = p.get("max-rate", 200_000.0)?;
        let rates = match p.list::<u64>("rates")? {
            Some(r) => r,
            None => {
                let mut r = Vec::new();
                let mut x = start;
                while x <= max_rate && r.len() < 200 {
                    let v = x.round() as u64;
                    if r.last() != Some(&v) {
                        r.push(v);
                    }
                    x *= growth.max(1.01);
                }
                r
            }
        };
        Ok(Fanout {
            topics: topics.max(1),
            subscribers: p.get("subscribers", default_subs)?,
            publishers: p.get("publishers", 1usize)?.clamp(1, topics.max(1)),
            step_secs: p.get("step-secs", 3.0)?,
            rates,
            stop_p99_ms: p.get("stop-p99-ms", 50.0)?,
            ok_p99_ms: p.get("ok-p99-ms", 25.0)?,
            pad: p.get("payload-pad", 0usize)?,
            connect_parallel: p.get("connect-parallel", 64usize)?,
            warmup_secs: p.get("warmup-secs", 1.0)?,
        })
    }

    pub fn describe(&self) -> String {
        format!("{} topic(s) × {} subscribers", self.topics, self.subscribers)
    }
}

pub struct Step {
    pub rate: u64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds the server and the generator used during the step.
    pub server_cpu_s: f64,
    pub generator_cpu_s: f64,
}

impl Step {
    pub fn json(&self) -> Value {
        json!({"rate": self.rate, "sent": self.sent, "expected": self.expected, "delivered": self.delivered,
               "deliveries_per_s": self.deliveries_per_s.round(), "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
               "p99_ms": self.p99_ms, "max_ms": self.max_ms,
               "server_cpu_s": (self.server_cpu_s * 100.0).round() / 100.0,
               "generator_cpu_s": (self.generator_cpu_s * 100.0).round() / 100.0})
    }
}

pub struct FanoutResult {
    pub proto: String,
    pub steps: Vec<Step>,
    /// Index of the best step with p99 ≤ ok_p99_ms and ≥ 99 % delivered.
    pub best: Option<usize>,
    pub connect_secs: f64,
    pub rss_kb_joined: u64,
    pub rss_kb_after: u64,
    pub errors: u64,
}

impl FanoutResult {
    pub fn best(&self) -> Option<&Step> {
        self.best.map(|i| &self.steps[i])
    }

    pub fn best_rate(&self) -> f64 {
        self.best().map(|s| s.deliveries_per_s).unwrap_or(0.0)
    }

    /// Deliveries per CPU-second of the server over all steps: an efficiency figure that a
    /// busy machine disturbs far less than latency.
    pub fn per_server_cpu_s(&self) -> f64 {
        let cpu: f64 = self.steps.iter().map(|s| s.server_cpu_s).sum();
        if cpu > 0.0 {
            self.total_delivered() as f64 / cpu
        } else {
            0.0
        }
    }

    pub fn total_delivered(&self) -> u64 {
        self.steps.iter().map(|s| s.delivered).sum()
    }

    pub fn json(&self) -> Value {
        let b = self.best();
        json!({
            "server": self.proto,
            "deliveries_per_s": b.map(|s| s.deliveries_per_s.round()),
            "p50_ms": b.map(|s| s.p50_ms),
            "p99_ms": b.map(|s| s.p99_ms),
            "at_rate": b.map(|s| s.rate),
            "delivered_total": self.total_delivered(),
            "deliveries_per_server_cpu_s": self.per_server_cpu_s().round(),
            "connect_secs": self.connect_secs,
            "server_rss_kb_joined": self.rss_kb_joined,
            "server_rss_kb_after": self.rss_kb_after,
            "errors": self.errors,
            "steps": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
        })
    }

    pub fn summary(&self, w: &Fanout) -> String {
        match self.best() {
            Some(b) => format!(
                "{}: max {:.0} deliveries/s at p99 {:.2} ms (≤ {} ms; p50 {:.2} ms) at {} msgs/s, {}; {} steps, {} errors",
                self.proto, b.deliveries_per_s, b.p99_ms, w.ok_p99_ms, b.p50_ms, b.rate, w.describe(), self.steps.len(), self.errors
            ),
            None => format!(
                "{}: no step met p99 ≤ {} ms with ≥ 99 % delivered ({}; {} steps, {} delivered, {} errors)",
                self.proto, w.ok_p99_ms, w.describe(), self.steps.len(), self.total_delivered(), self.errors
            ),
        }
    }
}

/// Runs the rising-rate fan-out against a server on `port` (RSS read from `pid`).
/// realtime-rs against another server on the same workload: the summary line, the
/// ratio of deliveries/s at the p99 bound, and the ratio of deliveries per server
/// CPU-second (each `None` when the other server has no figure).
pub struct Comparison {
    pub summary: String,
    pub ratio: Option<f64>,
    pub cpu_ratio: Option<f64>,
}

pub fn compare(rt: &FanoutResult, other: &FanoutResult, other_name: &str, w: &Fanout) -> Comparison {
    let divide = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let show = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "n/a".into());
    let ratio = divide(rt.best_rate(), other.best_rate());
    let cpu_ratio = divide(rt.per_server_cpu_s(), other.per_server_cpu_s());
    let summary = format!(
        "realtime-rs ÷ {other_name} = {} ({:.0} vs {:.0} deliveries/s at p99 ≤ {} ms, {}); \
         deliveries per server CPU-second: {:.0} vs {:.0} (ratio {})",
        show(ratio),
        rt.best_rate(),
        other.best_rate(),
        w.ok_p99_ms,
        w.describe(),
        rt.per_server_cpu_s(),
        other.per_server_cpu_s(),
        show(cpu_ratio)
    );
    Comparison {
        summary,
        ratio,
        cpu_ratio,
    }
}

pub async fn run_fanout(proto: &Proto, port: u16, pid: u32, w: &Fanout, verbose: bool) -> Res<FanoutResult> {
    let recorder = Recorder::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let topics: Vec<String> = (0..w.topics).map(|i| proto.topic(i)).collect();
    let started = Instant::now();

    // Subscribers, `connect_parallel` at a time.
    let total = w.topics * w.subscribers;
    let mut set: JoinSet<Res<(usize, Ws)>> = JoinSet::new();
    let mut next = 0usize;
    let mut opened = Vec::with_capacity(total);
    while opened.len() < total {
        while next < total && set.len() < w.connect_parallel.max(1) {
            let (proto, topic, i) = (proto.clone(), topics[next % w.topics].clone(), next);
            set.spawn(async move { Ok((i, proto.open(port, &[topic], None).await?)) });
            next += 1;
        }
        match set.join_next().await {
            Some(r) => opened.push(r??),
            None => break,
        }
    }
    for (i, ws) in opened {
        spawn_receiver(proto, ws, i, recorder.clone(), stop.clone());
    }

    // Publishers: publisher p serves topics p, p + P, …
    let mut pubs = Vec::new();
    for p in 0..w.publishers {
        let mine: Vec<String> = topics.iter().skip(p).step_by(w.publishers).cloned().collect();
        let ws = proto.open(port, &mine, None).await?;
        let (reader, writer) = split(ws);
        // Drain whatever the server sends the publisher (replies, pings).
        spawn_drain(proto.clone(), reader, writer.clone(), stop.clone());
        if let Some(vsn) = proto.heartbeats() {
            spawn_heartbeats(writer.clone(), vsn, Duration::from_secs(25), stop.clone());
        }
        pubs.push((mine, writer));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_kb_joined = rss_kb(pid);
    if verbose {
        println!(
            "{}: {} connected and subscribed in {:.1} s, server RSS {} KB",
            proto.name(),
            w.describe(),
            connect_secs,
            rss_kb_joined
        );
        println!(
            "{:>9} {:>9} {:>11} {:>11} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "msgs/s",
            "sent",
            "expected",
            "delivered",
            "deliveries/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "srv cpu",
            "gen cpu"
        );
    }

    if w.warmup_secs > 0.0 {
        let rate = w.rates.first().copied().unwrap_or(100) as f64 / w.publishers as f64;
        for (mine, writer) in &pubs {
            publish(proto, mine, writer, rate, w.warmup_secs, 0, w.pad).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut steps = Vec::new();
    for (k, &rate) in w.rates.iter().enumerate() {
        let step_no = k as u32 + 1;
        recorder.begin(step_no);
        let t0 = now_ns();
        let (cpu_server0, cpu_gen0) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let per_pub = rate as f64 / w.publishers as f64;
        let mut tasks = JoinSet::new();
        for (mine, writer) in &pubs {
            let (proto, mine, writer, secs, pad) = (proto.clone(), mine.clone(), writer.clone(), w.step_secs, w.pad);
            tasks.spawn(async move { publish(&proto, &mine, &writer, per_pub, secs, step_no, pad).await });
        }
        let mut sent = 0u64;
        while let Some(r) = tasks.join_next().await {
            sent += r??;
        }
        let expected = sent * w.subscribers as u64;
        // Let the step drain: until everything arrived, or 3 s without progress.
        let mut last = (recorder.delivered(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let d = recorder.delivered();
            if d >= expected {
                break;
            }
            if d != last.0 {
                last = (d, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let c = recorder.collect()?;
        let span = (c.last_ns.saturating_sub(t0) as f64 / 1e9).max(w.step_secs).max(0.001);
        let step = Step {
            rate,
            sent,
            expected,
            delivered: c.count,
            deliveries_per_s: c.count as f64 / span,
            p50_ms: ms(c.hist.value_at_quantile(0.5)),
            p90_ms: ms(c.hist.value_at_quantile(0.9)),
            p99_ms: ms(c.hist.value_at_quantile(0.99)),
            max_ms: ms(c.hist.max()),
            server_cpu_s: cpu_secs(pid) - cpu_server0,
            generator_cpu_s: cpu_secs(std::process::id()) - cpu_gen0,
        };
        if verbose {
            println!(
                "{:>9} {:>9} {:>11} {:>11} {:>13.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2}s {:>7.2}s",
                step.rate,
                step.sent,
                step.expected,
                step.delivered,
                step.deliveries_per_s,
                step.p50_ms,
                step.p90_ms,
                step.p99_ms,
                step.max_ms,
                step.server_cpu_s,
                step.generator_cpu_s
            );
        }
        let over = step.p99_ms > w.stop_p99_ms || step.delivered * 10 < step.expected * 9;
        steps.push(step);
        if over {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let best = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.p99_ms <= w.ok_p99_ms && s.delivered * 100 >= s.expected * 99 && s.delivered > 0)
        .max_by(|a, b| a.1.deliveries_per_s.total_cmp(&b.1.deliveries_per_s))
        .map(|(i, _)| i);
    let result = FanoutResult {
        proto: proto.name(),
        steps,
        best,
        connect_secs,
        rss_kb_joined,
        rss_kb_after: rss_kb(pid),
        errors: recorder.errors.load(Ordering::Relaxed) + recorder.closed.load(Ordering::Relaxed),
    };
    // Dropping the publishers' writers and the stop flag lets every task end.
    drop(pubs);
    Ok(result)
}

fn spawn_receiver(proto: &Proto, ws: Ws, who: usize, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let proto = proto.clone();
    tokio::spawn(async move {
        let (mut reader, writer) = split(ws);
        if let Some(vsn) = proto.heartbeats() {
            spawn_heartbeats(writer.clone(), vsn, Duration::from_secs(25), stop.clone());
        }
        loop {
            match next_frame(&mut reader, &writer).await {
                Ok(Some((op, data))) => {
                    if let Some((step, t)) = read_stamp(&data) {
                        recorder.record(who, step, t);
                    } else if let Some(answer) = proto.answer(op, &data) {
                        let _ = send_text(&writer, answer).await;
                    }
                }
                Ok(None) => {
                    if !stop.load(Ordering::Relaxed) {
                        recorder.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(_) => {
                    if !stop.load(Ordering::Relaxed) {
                        recorder.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
}

fn spawn_drain(proto: Proto, mut reader: Reader, writer: Writer, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while let Ok(Some((op, data))) = next_frame(&mut reader, &writer).await {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(answer) = proto.answer(op, &data) {
                let _ = send_text(&writer, answer).await;
            }
        }
    });
}

/// Publishes at `rate` msgs/s for `secs`, round-robin over `topics`; returns the count.
async fn publish(
    proto: &Proto,
    topics: &[String],
    writer: &Writer,
    rate: f64,
    secs: f64,
    step: u32,
    pad: usize,
) -> Res<u64> {
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while start.elapsed() < dur {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64().min(secs) * rate) as u64;
        let mut w = writer.lock().await;
        while sent < due {
            let i = (sent as usize) % topics.len();
            let (op, bytes) = proto.publish(&topics[i], i + 1, &stamp(step, now_ns(), pad));
            w.write_frame(Frame::new(true, op, None, Payload::Owned(bytes))).await?;
            sent += 1;
        }
    }
    Ok(sent)
}
