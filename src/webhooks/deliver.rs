//! Sends one receiver's batches, in order, one at a time: at least once, retried on a
//! non-2xx answer, a connection error or a timeout with exponential backoff and jitter,
//! up to WEBHOOK_MAX_RETRIES retries; then the batch is dropped and counted. A slow or
//! dead receiver only ever holds up its own queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::queue::Queue;
use super::sign;

/// One attempt (connect, send, answer) may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay; doubles per retry up to [`MAX_BACKOFF`], ±50 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how to deliver.
pub struct Receiver {
    /// `http://host[:port]/path` (plain HTTP; put a TLS proxy in front for https).
    pub url: Uri,
    /// Signs every body.
    pub secret: Arc<[u8]>,
    /// Retries after the first attempt.
    pub max_retries: u32,
}

/// Delivers the queue's batches to `to` for the life of the server.
pub async fn run(to: Receiver, queue: Arc<Queue>) {
    loop {
        let batch = queue.pop().await;
        let mut attempt: u32 = 0;
        loop {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&to, batch.clone())).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    crate::observability::metrics::webhook_delivered();
                    debug!(url = %to.url, status, attempt, "webhook batch delivered");
                    break;
                }
                Ok(Ok(status)) => warn!(url = %to.url, status, attempt, "webhook receiver refused a batch"),
                Ok(Err(e)) => warn!(url = %to.url, error = %e, attempt, "webhook delivery failed"),
                Err(_) => warn!(url = %to.url, attempt, "webhook delivery timed out"),
            }
            if attempt >= to.max_retries {
                crate::observability::metrics::webhook_batch_dropped("retries_exhausted");
                warn!(url = %to.url, attempts = attempt + 1, "webhook batch dropped after its last retry");
                break;
            }
            crate::observability::metrics::webhook_retried();
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }
}

/// Delay before retry `attempt + 1`: 200 ms · 2^attempt, capped, times 0.5–1.5.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
    base.mul_f64(0.5 + rand::random::<f64>())
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One POST on a fresh connection; the answer's status.
async fn post(to: &Receiver, body: Bytes) -> Result<u16, Error> {
    let host = to.url.host().ok_or("webhook URL without a host")?;
    let port = to.url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "webhook connection ended");
        }
    });
    let now = crate::clock::now_ms().max(0) as u64 / 1000;
    let path = to.url.path_and_query().map_or("/", |p| p.as_str());
    let authority = to.url.authority().map_or(host, |a| a.as_str());
    let req = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(sign::HEADER, sign::signature(&to.secret, now, &body))
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
            assert!(d >= base / 2 && d <= base.mul_f64(1.5), "{attempt}: {d:?}");
        }
    }
}
