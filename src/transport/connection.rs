//! One WebSocket connection: a reader task and the connection task.
//!
//! fastwebsockets' `read_frame` is not cancel safe, so it runs alone in the reader task,
//! which forwards whole messages over a small channel. The connection task owns the
//! [`Session`] (so nothing in it is locked) and selects over: queued outbound messages
//! (written in one batch per wake-up), inbound messages, timers (liveness pings, idle
//! timeout, token expiry) and server shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use realtime_protocol::{Vsn, WireFrame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::guard::{FrameGuard, MessageTooBig};
use super::outbox::{Closed, Outbox, Outgoing};
use crate::app::{now_ms, App};
use crate::channel::Session;

/// What the reader task hands over.
enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A control frame arrived (ping or pong): the peer is alive.
    Alive,
    /// The client broke the WebSocket protocol; the reader has stopped.
    Broken(End),
}

/// Why the connection ended; becomes the close frame sent to the client.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The client closed or the socket failed.
    Peer,
    /// No pong or anything else for two ping intervals.
    Dead,
    /// No message for the idle timeout.
    Idle,
    /// The client cannot keep up with its outbound queue.
    Slow,
    /// The server is shutting down.
    Shutdown,
    /// A limit ends the connection (e.g. joins per second: 1001).
    Limit(u16, &'static str),
    /// A message over the size limit.
    TooBig,
    /// A text message that is not UTF-8.
    NotUtf8,
    /// Any other WebSocket protocol violation (bad fragments, reserved bits, ...).
    Protocol,
}

impl End {
    /// The reason logged and counted (`realtime_connection_closes_total{reason}`).
    fn name(self) -> &'static str {
        match self {
            End::Peer => "peer",
            End::Dead => "dead",
            End::Idle => "idle",
            End::Slow => "slow",
            End::Shutdown => "shutdown",
            End::Limit(..) => "limit",
            End::TooBig => "too_big",
            End::NotUtf8 => "not_utf8",
            End::Protocol => "protocol",
        }
    }

    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            End::Dead => None,
            End::Peer => Some((1000, "")),
            End::Idle => Some((1000, "idle timeout")),
            End::Slow => Some((1013, "slow consumer: outbound queue full")),
            // Supabase's service-restart code; clients reconnect.
            End::Shutdown => Some((1012, "server shutting down")),
            End::Limit(code, reason) => Some((code, reason)),
            // The codes Cowboy (Supabase's WebSocket server) closes with, without a reason.
            End::TooBig => Some((1009, "")),
            End::NotUtf8 => Some((1007, "")),
            End::Protocol => Some((1002, "")),
        }
    }
}

/// Serves an upgraded connection until it ends.
pub async fn run(app: Arc<App>, io: TokioIo<Upgraded>, vsn: Vsn, token: String) {
    let config = &app.config;
    crate::observability::metrics::connection_opened();
    debug!(?vsn, "connection opened");
    let outbox = Arc::new(Outbox::new(config.outbound_queue_messages, config.outbound_queue_bytes));
    let (read_half, mut write_half) = tokio::io::split(io);
    let guarded = FrameGuard::new(read_half, config.max_frame_size);
    // Frames are written by the connection task in batches, so fastwebsockets' own write
    // half (one write per frame) is not used; fastwebsockets still formats every header.
    let (ws_read, _) = fastwebsockets::after_handshake_split(guarded, tokio::io::sink(), Role::Server);
    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::spawn(tracing::Instrument::in_current_span(read_loop(
        FragmentCollectorRead::new(ws_read),
        tx,
        outbox.clone(),
    )));

    let mut session = Session::new(app.clone(), vsn, outbox.clone(), token);
    let end = drive(&app, &mut session, &mut rx, &mut write_half, &outbox).await;
    // A silently dead peer never completes a read: stop the reader explicitly.
    reader.abort();
    session.terminate();
    outbox.close();
    // The peer may not be reading (slow consumer): never wait long for it.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some((code, reason)) = end.close_frame() {
            let mut frame = Frame::close(code, reason.as_bytes());
            let mut head = [0u8; 14];
            let n = frame.fmt_head(&mut head);
            let _ = write_half.write_all(&head[..n]).await;
            let _ = write_half.write_all(&frame.payload).await;
        }
        let _ = write_half.shutdown().await;
    })
    .await;
    crate::observability::metrics::connection_closed(end.name());
    info!(reason = end.name(), "connection closed");
}

/// Reads whole messages and forwards them. Pings are answered through the outbox.
async fn read_loop<R>(mut ws: FragmentCollectorRead<R>, tx: mpsc::Sender<Incoming>, outbox: Arc<Outbox>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let alive = tx.clone();
    let mut obligated = |frame: Frame<'_>| {
        // The frames fastwebsockets obliges us to send: a pong for a ping, or the echo
        // of a close (the connection ends right after, so that one is not needed).
        if frame.opcode == OpCode::Pong {
            outbox.push_control(Outgoing::Pong(Bytes::copy_from_slice(&frame.payload)));
        }
        let _ = alive.try_send(Incoming::Alive);
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    loop {
        let incoming = match ws.read_frame(&mut obligated).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text => Incoming::Text(into_bytes(frame.payload)),
                OpCode::Binary => Incoming::Binary(into_bytes(frame.payload)),
                OpCode::Close => return,
                _ => Incoming::Alive,
            },
            Err(e) => {
                debug!(error = %e, "read ended");
                if let Some(end) = broken(&e) {
                    info!(error = %e, "closing a connection that broke the WebSocket protocol");
                    let _ = tx.send(Incoming::Broken(end)).await;
                }
                return;
            }
        };
        if tx.send(incoming).await.is_err() {
            return;
        }
    }
}

/// The close a read error calls for, or `None` when the peer simply went away.
fn broken(e: &WebSocketError) -> Option<End> {
    match e {
        WebSocketError::IoError(io) if io.get_ref().is_some_and(|inner| inner.is::<MessageTooBig>()) => {
            Some(End::TooBig)
        }
        WebSocketError::FrameTooLarge => Some(End::TooBig),
        WebSocketError::InvalidUTF8 => Some(End::NotUtf8),
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_) => None,
        _ => Some(End::Protocol),
    }
}

fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

/// The connection task's loop; returns why the connection ends.
async fn drive<W>(
    app: &App,
    session: &mut Session,
    rx: &mut mpsc::Receiver<Incoming>,
    writer: &mut W,
    outbox: &Outbox,
) -> End
where
    W: AsyncWrite + Unpin,
{
    let config = &app.config;
    let ping_every = Duration::from_millis(config.ping_interval_ms.max(1));
    let idle = Duration::from_millis(config.idle_timeout_ms.max(1));
    let mut shutdown = app.shutdown.clone();
    let mut last_any = Instant::now();
    let mut last_msg = last_any;
    let mut pinged = false;
    let mut items = Vec::new();
    let mut buf = Vec::new();
    if *shutdown.borrow() {
        return End::Shutdown;
    }
    loop {
        let liveness = last_any + if pinged { ping_every * 2 } else { ping_every };
        let mut deadline = liveness.min(last_msg + idle);
        if let Some(exp) = session.next_expiry_ms() {
            let wait = Duration::from_millis(u64::try_from(exp - now_ms()).unwrap_or(0));
            deadline = deadline.min(Instant::now() + wait);
        }
        tokio::select! {
            biased;
            // A write to a client that stopped reading blocks; overflowing its outbox
            // meanwhile must still end the connection, so the write races the close.
            _ = outbox.ready() => match tokio::select! {
                r = write_batch(writer, outbox, &mut items, &mut buf) => r,
                _ = outbox.wait_closed() => Ok(outbox.drain(&mut items)),
            } {
                Ok(None) => {}
                Ok(Some(Closed::SlowConsumer)) => {
                    warn!(error_code = "SlowConsumer", "outbound queue full: disconnecting client");
                    return End::Slow;
                }
                Ok(Some(Closed::Gone)) => return End::Peer,
                Ok(Some(Closed::Requested(code, reason))) => {
                    info!(code, reason, "closing the connection: limit");
                    return End::Limit(code, reason);
                }
                Err(e) => {
                    debug!(error = %e, "write failed");
                    return End::Peer;
                }
            },
            msg = rx.recv() => {
                let Some(msg) = msg else { return End::Peer };
                last_any = Instant::now();
                pinged = false;
                match msg {
                    Incoming::Text(bytes) => {
                        last_msg = last_any;
                        session.handle_text(&bytes).await;
                    }
                    Incoming::Binary(bytes) => {
                        last_msg = last_any;
                        session.handle_binary(&bytes).await;
                    }
                    Incoming::Alive => {}
                    Incoming::Broken(end) => return end,
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if now >= last_msg + idle {
                    info!("closing idle connection");
                    return End::Idle;
                }
                if pinged && now >= last_any + ping_every * 2 {
                    info!("peer did not answer pings: dropping it");
                    return End::Dead;
                }
                if !pinged && now >= last_any + ping_every {
                    outbox.push_control(Outgoing::Ping);
                    pinged = true;
                }
                session.expire_tokens();
            }
            _ = shutdown.changed() => {
                session.announce_disconnect();
                let _ = write_batch(writer, outbox, &mut items, &mut buf).await;
                return End::Shutdown;
            }
        }
    }
}

/// Frames larger than this are written on their own instead of copied into the batch.
const LARGE_FRAME: usize = 16 * 1024;
/// Batches are written out once they reach this size.
const BATCH_LIMIT: usize = 64 * 1024;

/// Drains the outbox and writes everything in as few writes as possible, then flushes.
async fn write_batch<W>(
    writer: &mut W,
    outbox: &Outbox,
    items: &mut Vec<Outgoing>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Closed>>
where
    W: AsyncWrite + Unpin,
{
    if let Some(closed) = outbox.drain(items) {
        items.clear();
        return Ok(Some(closed));
    }
    let frames = items.len();
    let mut bytes = 0;
    let mut requested = None;
    for item in items.drain(..) {
        let (opcode, payload): (OpCode, &[u8]) = match &item {
            Outgoing::Close(code, reason) => {
                requested = Some(Closed::Requested(*code, reason));
                break;
            }
            Outgoing::Frame(WireFrame::Text(b)) => (OpCode::Text, b),
            Outgoing::Frame(WireFrame::Binary(b)) => (OpCode::Binary, b),
            Outgoing::Pong(b) => (OpCode::Pong, b),
            Outgoing::Ping => (OpCode::Ping, &[]),
        };
        bytes += payload.len();
        let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
        let mut head = [0u8; 14];
        let n = frame.fmt_head(&mut head);
        buf.extend_from_slice(&head[..n]);
        if payload.len() >= LARGE_FRAME {
            writer.write_all(buf).await?;
            buf.clear();
            writer.write_all(payload).await?;
        } else {
            buf.extend_from_slice(payload);
        }
        if buf.len() >= BATCH_LIMIT {
            writer.write_all(buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        writer.write_all(buf).await?;
        buf.clear();
    }
    // An idle connection should not keep a burst's buffers.
    if buf.capacity() > BATCH_LIMIT {
        *buf = Vec::new();
    }
    if items.capacity() > 256 {
        *items = Vec::new();
    }
    writer.flush().await?;
    crate::observability::metrics::written(frames, bytes);
    Ok(requested)
}
