//! One WebSocket connection, served by one task.
//!
//! The task owns the [`Session`] (so nothing in it is locked) and selects over: queued
//! outbound messages (written in one batch per wake-up), the next inbound frame, timers
//! (liveness pings, idle timeout, token expiry) and server shutdown.
//!
//! fastwebsockets' `read_frame` is not cancel safe, so the read is a boxed future that
//! lives across loop turns and owns the reading state ([`Reader`]); each completed read
//! hands the state back for the next. Between frames an idle connection holds no read
//! buffer: see [`super::guard`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use realtime_protocol::{Vsn, WireFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::guard::{FrameGuard, MessageTooBig, UnmaskedFrame};
use super::outbox::{Closed, Outbox, Outgoing};
use crate::app::App;
use crate::channel::Session;
use crate::clock::now_ms;

/// What one read produced.
enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A control frame or a message fragment arrived: the peer is alive.
    Alive,
    /// The peer closed the connection or the socket failed.
    Gone,
    /// The client broke the WebSocket protocol.
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
    let reader = Reader {
        guard: FrameGuard::new(read_half, config.max_frame_size),
        partial: None,
        outbox: outbox.clone(),
    };
    let mut session = Session::new(app.clone(), vsn, outbox.clone(), token);
    let end = drive(&app, &mut session, reader, &mut write_half, &outbox).await;
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

/// A data message arriving in fragments.
struct Partial {
    opcode: OpCode,
    data: Vec<u8>,
}

/// The reading state of a connection, moved into each read and handed back by it.
struct Reader<R> {
    guard: FrameGuard<R>,
    /// A fragmented message being assembled.
    partial: Option<Partial>,
    outbox: Arc<Outbox>,
}

impl<R: AsyncRead + Unpin + Send> Reader<R> {
    /// Reads the next frame; returns the state for the following read with the result.
    async fn next(mut self) -> (Self, Incoming) {
        let incoming = self.read().await;
        (self, incoming)
    }

    async fn read(&mut self) -> Incoming {
        // Wait for bytes before building fastwebsockets' reader (and its 8 KB buffer):
        // idle connections hold no read buffer.
        match self.guard.fill().await {
            Ok(true) => {}
            Ok(false) => return Incoming::Gone,
            Err(e) => return read_failed(&WebSocketError::IoError(e)),
        }
        // The guard hands up one frame at most, so the reader's buffer is empty again once
        // it has returned a frame and can be dropped with it. Frames are read one at a
        // time (not with FragmentCollectorRead) so that no fastwebsockets state outlives a
        // frame; fragments are joined in `partial` instead.
        let limit = self.guard.max_message();
        let (mut ws, _) = fastwebsockets::after_handshake_split(&mut self.guard, tokio::io::sink(), Role::Server);
        // Pings come back to us (answered through the outbox, counted as liveness).
        ws.set_auto_pong(false);
        // The guard enforces the limit; fastwebsockets' own must not be lower.
        ws.set_max_message_size(limit.saturating_add(1));
        // The close echo fastwebsockets asks for is not needed: the connection ends and
        // sends its own close frame.
        let mut ignore = |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
        let frame = match ws.read_frame(&mut ignore).await {
            Ok(frame) => frame,
            Err(e) => return read_failed(&e),
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary if self.partial.is_some() => Incoming::Broken(End::Protocol),
            OpCode::Text if frame.fin => Incoming::Text(into_bytes(frame.payload)),
            OpCode::Binary if frame.fin => Incoming::Binary(into_bytes(frame.payload)),
            OpCode::Text | OpCode::Binary => {
                self.partial = Some(Partial {
                    opcode: frame.opcode,
                    data: frame.payload.to_vec(),
                });
                Incoming::Alive
            }
            OpCode::Continuation => {
                let Some(Partial { opcode, mut data }) = self.partial.take() else {
                    return Incoming::Broken(End::Protocol);
                };
                data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    self.partial = Some(Partial { opcode, data });
                    return Incoming::Alive;
                }
                if opcode == OpCode::Binary {
                    Incoming::Binary(Bytes::from(data))
                } else if std::str::from_utf8(&data).is_ok() {
                    Incoming::Text(Bytes::from(data))
                } else {
                    Incoming::Broken(End::NotUtf8)
                }
            }
            OpCode::Ping => {
                self.outbox
                    .push_control(Outgoing::Pong(Bytes::copy_from_slice(&frame.payload)));
                Incoming::Alive
            }
            OpCode::Pong => Incoming::Alive,
            OpCode::Close => Incoming::Gone,
        }
    }
}

/// What a failed read means for the connection.
fn read_failed(e: &WebSocketError) -> Incoming {
    debug!(error = %e, "read ended");
    match broken(e) {
        Some(end) => {
            info!(error = %e, "closing a connection that broke the WebSocket protocol");
            Incoming::Broken(end)
        }
        None => Incoming::Gone,
    }
}

/// The close a read error calls for, or `None` when the peer simply went away.
fn broken(e: &WebSocketError) -> Option<End> {
    match e {
        WebSocketError::IoError(io) if io.get_ref().is_some_and(|inner| inner.is::<MessageTooBig>()) => {
            Some(End::TooBig)
        }
        WebSocketError::IoError(io) if io.get_ref().is_some_and(|inner| inner.is::<UnmaskedFrame>()) => {
            Some(End::Protocol)
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
async fn drive<R, W>(app: &App, session: &mut Session, reader: Reader<R>, writer: &mut W, outbox: &Outbox) -> End
where
    R: AsyncRead + Unpin + Send + 'static,
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
    let mut reading = Box::pin(reader.next());
    if *shutdown.borrow() {
        return End::Shutdown;
    }
    loop {
        let liveness = last_any + if pinged { ping_every * 2 } else { ping_every };
        let mut deadline = liveness.min(last_msg + idle);
        if let Some(exp) = session.next_timer_ms() {
            let wait = Duration::from_millis(u64::try_from(exp - now_ms()).unwrap_or(0));
            deadline = deadline.min(Instant::now() + wait);
        }
        tokio::select! {
            biased;
            // A write to a client that stopped reading blocks; overflowing its outbox
            // meanwhile must still end the connection, so the write races the close.
            _ = outbox.ready() => if let Some(end) = write_out(writer, outbox, &mut items, &mut buf).await {
                return end;
            },
            (reader, msg) = &mut reading => {
                reading = Box::pin(reader.next());
                last_any = Instant::now();
                pinged = false;
                match msg {
                    // Handlers are boxed: their futures (joins wait on the database) are
                    // large and would otherwise sit in every idle connection's task.
                    Incoming::Text(bytes) => {
                        last_msg = last_any;
                        let handling = Box::pin(session.handle_text(&bytes));
                        if let Some(end) = while_handling(handling, writer, outbox, &mut items, &mut buf, &mut shutdown).await {
                            return end;
                        }
                    }
                    Incoming::Binary(bytes) => {
                        last_msg = last_any;
                        let handling = Box::pin(session.handle_binary(&bytes));
                        if let Some(end) = while_handling(handling, writer, outbox, &mut items, &mut buf, &mut shutdown).await {
                            return end;
                        }
                    }
                    Incoming::Alive => {}
                    Incoming::Gone => return End::Peer,
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
                session.on_timer();
            }
            _ = shutdown.changed() => {
                session.announce_disconnect();
                let _ = write_batch(writer, outbox, &mut items, &mut buf).await;
                return End::Shutdown;
            }
        }
    }
}

/// Runs a message's handler to completion while the connection keeps writing: a handler
/// may wait on the database (a private join's authorization, a Postgres Changes
/// subscription), and meanwhile the channels already joined keep receiving. Without this,
/// a busy topic filled the outbox during the wait and the client was cut off as a slow
/// consumer because of its own join. Reading waits (messages are handled in order), and
/// the session's timers run once the handler is done (it holds the session).
async fn while_handling<W>(
    handling: std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
    writer: &mut W,
    outbox: &Outbox,
    items: &mut Vec<Outgoing>,
    buf: &mut Vec<u8>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<End>
where
    W: AsyncWrite + Unpin,
{
    let mut handling = handling;
    loop {
        tokio::select! {
            biased;
            () = &mut handling => return None,
            _ = outbox.ready() => if let Some(end) = write_out(writer, outbox, items, buf).await {
                return Some(end);
            },
            // Shutdown does not wait for a slow handler.
            _ = shutdown.changed() => if *shutdown.borrow() {
                let _ = write_batch(writer, outbox, items, buf).await;
                return Some(End::Shutdown);
            },
        }
    }
}

/// Writes what the outbox holds; returns why the connection must end, if it must.
async fn write_out<W>(writer: &mut W, outbox: &Outbox, items: &mut Vec<Outgoing>, buf: &mut Vec<u8>) -> Option<End>
where
    W: AsyncWrite + Unpin,
{
    // A write to a client that stopped reading blocks; overflowing its outbox meanwhile
    // must still end the connection, so the write races the close.
    let written = tokio::select! {
        r = write_batch(writer, outbox, items, buf) => r,
        _ = outbox.wait_closed() => Ok(outbox.drain(items)),
    };
    match written {
        Ok(None) => None,
        Ok(Some(Closed::SlowConsumer)) => {
            warn!(error_code = "SlowConsumer", "outbound queue full: disconnecting client");
            Some(End::Slow)
        }
        Ok(Some(Closed::Gone)) => Some(End::Peer),
        Ok(Some(Closed::Requested(code, reason))) => {
            info!(code, reason, "closing the connection: limit");
            Some(End::Limit(code, reason))
        }
        Err(e) => {
            debug!(error = %e, "write failed");
            Some(End::Peer)
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
