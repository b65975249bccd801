//! A webhook receiver inside the test: an HTTP listener on a free loopback port that hands
//! over each request and answers with the statuses it was given (200 once they run out).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The path the receiver answers on (any other path fails the test).
const PATH: &str = "/hooks/realtime";

/// One request as the receiver saw it.
pub struct Received {
    /// The `x-realtime-signature` header.
    pub signature: String,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    /// The batch's events.
    pub fn events(&self) -> Vec<Value> {
        let batch: Value = serde_json::from_slice(&self.body).unwrap();
        batch["events"].as_array().unwrap().clone()
    }
}

/// Starts a receiver answering with `statuses` in turn; its URL and its requests.
pub async fn receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            // A sender killed mid-request (cluster tests kill nodes) is skipped.
            let Some((signature, body)) = read_request(&mut s).await else {
                continue;
            };
            let status = statuses.next().unwrap_or(200);
            let _ = tx.send(Received {
                signature,
                body,
                at: Instant::now(),
            });
            let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

/// Reads the head, then as much body as Content-Length says: the signature and the body.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let (head_end, len) = loop {
        let n = s.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
            assert!(head.starts_with(&format!("post {PATH} http/1.1")), "{head}");
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap();
            break (i + 4, len);
        }
    };
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let signature = head
        .lines()
        .find_map(|l| l.strip_prefix("x-realtime-signature:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    Some((signature, raw[head_end..head_end + len].to_vec()))
}

/// The next request, within 10 s.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no webhook within 10 s")
        .unwrap()
}
