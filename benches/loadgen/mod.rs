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

mod params;
mod phoenix;
mod process;
mod proto;
mod recorder;
mod run;
mod stamp;
mod workload;
mod ws;

// Each bench uses a different part of the generator.
#[allow(unused_imports)]
pub use params::*;
#[allow(unused_imports)]
pub use phoenix::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proto::*;
#[allow(unused_imports)]
pub use recorder::*;
#[allow(unused_imports)]
pub use run::*;
#[allow(unused_imports)]
pub use stamp::*;
#[allow(unused_imports)]
pub use workload::*;
#[allow(unused_imports)]
pub use ws::*;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the generator's epoch (one process, one monotonic clock).
pub fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}
