//! The logical replication connection: startup with `replication=database`, authentication,
//! `IDENTIFY_SYSTEM`, slot creation, `START_REPLICATION`, CopyBoth framing, keepalives and
//! standby status updates.
//!
//! Why hand-written: crates.io `tokio-postgres` has no replication mode (no `replication`
//! startup parameter, no CopyBoth), and `postgres-protocol`'s backend parser rejects the
//! CopyBothResponse tag `W`. So `tokio_postgres::Config` is used only to parse the connection
//! string, `postgres-protocol` only to encode frontend messages and run SCRAM/MD5, and the
//! backend framing lives in [`frame`] (pure, unit-tested, never panics on input).
//!
//! Acknowledgement semantics: [`ReplicationStream::set_flushed`] records a position that is
//! sent verbatim as written = flushed = applied in standby status updates. Postgres reads it as
//! "the next WAL byte I still need" (last processed byte + 1) and stores it as the slot's
//! `confirmed_flush_lsn`; after a reconnect, streaming resumes with the first transaction
//! whose commit lies at or after it. So the caller passes:
//! * for a transaction it has fanned out: the Commit message's `end_lsn` (already the position
//!   just past the commit record), unchanged;
//! * for a keepalive when everything received before it has been processed: the keepalive's
//!   `wal_end` (Supabase sends `wal_end + 1`). Every transaction that committed before
//!   `wal_end` has already been streamed (or had nothing published); one still open at that
//!   point commits later, so acknowledging `wal_end` skips nothing. This is what lets the slot
//!   advance past WAL of unpublished tables, for which pgoutput sends nothing at all.
//!
//! PG15/16 caveat (verified by the tests): a `confirmed_flush_lsn` moved only by status
//! updates is not written to disk by a shutdown checkpoint (fixed in PG17), so after a server
//! restart the slot can resume from an older position and redeliver acknowledged
//! transactions. Delivery is at-least-once; dedupe by commit LSN where it matters.
//!
//! Not supported yet: TLS (`sslmode=require` is refused; `prefer` connects in plain text),
//! `target_session_attrs`, random host load balancing. TCP keepalives are not enabled; dead
//! peers are detected by the server through `wal_sender_timeout` and by the consumer through a
//! timeout around [`ReplicationStream::recv`] (the walsender sends a keepalive at least every
//! `wal_sender_timeout / 2` while idle).

mod frame;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::{ChannelBinding as ChannelBindingMode, Host, SslMode};

use self::frame::{AuthRequest, CopyPayload, Frame};
use crate::lsn::Lsn;
use crate::WalError;

/// Session settings sent in the startup packet so that every text value pgoutput emits has
/// one fixed format whatever the server, database or role defaults are: the value decoder
/// relies on it (timestamptz as `2025-11-03 09:32:55.123+00`, floats round-tripping, bytea as
/// hex, intervals in `postgres` style). They come after any `options` from the connection
/// string so they win (the last `-c` for a name takes effect).
const FORMAT_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres -c bytea_output=hex";

/// How long [`ReplicationStream::close`] waits for the server to finish the COPY.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest read buffer reservation: many small messages per read syscall.
const MIN_READ: usize = 64 * 1024;
/// Largest single reservation for a big frame; the buffer grows in steps of this size so a
/// lying length field cannot make us allocate far ahead of the bytes that actually arrive.
const MAX_RESERVE: usize = 16 * 1024 * 1024;

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// What to stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationOptions {
    /// Replication slot name, e.g. `realtime_rs` (lowercase letters, digits, `_`; ≤ 63 bytes).
    pub slot: String,
    /// Publication to stream, e.g. `supabase_realtime`.
    pub publication: String,
    /// A temporary slot dies with the connection (changes made while disconnected are lost);
    /// a persistent one (production) keeps WAL until acknowledged.
    pub temporary_slot: bool,
    /// `application_name` shown in `pg_stat_replication`, e.g. `realtime-rs`. When empty, the
    /// connection string's `application_name` is used.
    pub application_name: String,
}

/// One message from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// One pgoutput message (XLogData 'w'): start LSN, end LSN (walEnd), server send time
    /// (µs since 2000-01-01), payload bytes. Relation messages carry 0/0 positions.
    XLogData {
        start: Lsn,
        end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// Primary keepalive 'k'. When `reply_requested` was set, the stream has already answered
    /// it with the current flushed position; the consumer may use `wal_end` to advance when it
    /// has nothing pending.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// A logical replication session in CopyBoth mode.
pub struct ReplicationStream {
    conn: Conn,
    flushed: Lsn,
    /// A keepalive whose reply was queued but not yet fully written when a previous `recv` was
    /// cancelled; returned by the next `recv` once the reply is out, so it is never lost.
    pending: Option<ReplicationMessage>,
    /// Set after a terminal error (server error, EOF, protocol violation): the session cannot
    /// continue and the consumer must reconnect.
    broken: bool,
    slot: String,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("peer", &self.conn.peer)
            .field("slot", &self.slot)
            .field("flushed", &self.flushed)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Connects (TCP or Unix socket from the config; the first host that works), authenticates
    /// (trust, cleartext password, MD5, SCRAM-SHA-256), runs `IDENTIFY_SYSTEM`, creates the
    /// slot unless it exists, and starts streaming from the slot's `confirmed_flush_lsn`.
    ///
    /// There is no overall timeout: `CREATE_REPLICATION_SLOT` legitimately waits for running
    /// transactions to finish. Wrap the call in `tokio::time::timeout` if needed;
    /// `connect_timeout` from the config bounds each socket connect.
    pub async fn connect(config: &tokio_postgres::Config, opts: &ReplicationOptions) -> Result<Self, WalError> {
        let session = SessionParams::from_config(config, opts)?;
        let targets = targets(config)?;

        let mut last_err = None;
        let mut conn = None;
        for target in &targets {
            match open_session(target, config.get_connect_timeout().copied(), &session).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "replication connection attempt failed");
                    last_err = Some(e);
                }
            }
        }
        let Some(mut conn) = conn else {
            return Err(last_err.unwrap_or_else(|| WalError::Config("no host to connect to".into())));
        };

        identify_system(&mut conn).await?;
        create_slot(&mut conn, opts).await?;
        start_replication(&mut conn, opts).await?;

        Ok(ReplicationStream {
            conn,
            flushed: Lsn(0),
            pending: None,
            broken: false,
            slot: opts.slot.clone(),
        })
    }

    /// Next message from the walsender.
    ///
    /// Cancel safe: the only awaits are socket reads into an internal buffer (a partially
    /// received frame stays buffered) and writes from an internal buffer (a partially written
    /// reply is completed by the next call). A keepalive with `reply_requested` is answered
    /// (standby status update with the current flushed position) before it is returned.
    ///
    /// Errors: server ErrorResponse → `WalError::Server`; CopyDone or CommandComplete from
    /// the server (it ends the stream, e.g. at shutdown) or a closed connection →
    /// `WalError::Io(UnexpectedEof)`; garbage → `WalError::Protocol`.
    /// After any error the stream is dead and every later call fails; reconnect.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, WalError> {
        self.ensure_usable()?;
        // Finish any reply a cancelled call left half written before reading further, so the
        // server sees whole messages in order.
        if let Err(e) = self.conn.flush_out().await {
            return Err(self.fail(e, "flushing queued replies"));
        }
        if let Some(msg) = self.pending.take() {
            return Ok(msg);
        }
        loop {
            let frame = match frame::parse_frame(&mut self.conn.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if let Err(e) = self.conn.fill().await {
                        return Err(self.fail(e, "reading the replication stream"));
                    }
                    continue;
                }
                Err(e) => return Err(self.fail(e, "framing the replication stream")),
            };
            match self.handle_frame(frame) {
                Ok(Some(
                    msg @ ReplicationMessage::Keepalive {
                        reply_requested: true, ..
                    },
                )) => {
                    // The reply must go out now or the walsender drops us after
                    // wal_sender_timeout. Park the message first: if this future is dropped
                    // during the write, the next recv finishes the write and returns it.
                    self.queue_status(false);
                    self.pending = Some(msg.clone());
                    if let Err(e) = self.conn.flush_out().await {
                        return Err(self.fail(e, "answering a keepalive"));
                    }
                    self.pending = None;
                    tracing::trace!(flushed = %self.flushed, "answered keepalive");
                    return Ok(msg);
                }
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => continue,
                Err(e) => return Err(self.fail(e, "handling a replication message")),
            }
        }
    }

    /// Records that everything before `lsn` has been processed (fanned out). It is reported as
    /// written/flushed/applied in the next status update, verbatim (see the module docs for
    /// which value to pass). Never moves backwards.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        if lsn > self.flushed {
            tracing::trace!(from = %self.flushed, to = %lsn, "flushed position advanced");
            self.flushed = lsn;
        }
    }

    /// The position that status updates report.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Sends a standby status update now ('r', written = flushed = applied = the flushed
    /// position, client time, reply_requested = 0). Cancel safe like `recv`: an interrupted
    /// write is completed by the next `recv`/`send_status`.
    ///
    /// While nothing has been flushed yet (position 0/0) the server ignores the positions and
    /// only notes that the client is alive.
    pub async fn send_status(&mut self) -> Result<(), WalError> {
        self.ensure_usable()?;
        self.queue_status(false);
        if let Err(e) = self.conn.flush_out().await {
            return Err(self.fail(e, "sending a standby status update"));
        }
        tracing::trace!(flushed = %self.flushed, "sent standby status update");
        Ok(())
    }

    /// Ends the session politely: a last status update (so the slot records the final flushed
    /// position), CopyDone, then reads until ReadyForQuery or EOF (bounded by a short timeout,
    /// discarding any XLogData still in flight — it was not acknowledged, so it is redelivered
    /// next time), then Terminate.
    pub async fn close(mut self) -> Result<(), WalError> {
        if self.broken {
            // The server side is gone or in an unknown state; a Terminate is only a courtesy.
            frontend::terminate(&mut self.conn.wbuf);
            let _ = self.conn.flush_out().await;
            let _ = self.conn.io.shutdown().await;
            return Ok(());
        }
        self.queue_status(false);
        frontend::copy_done(&mut self.conn.wbuf);
        if let Err(e) = self.conn.flush_out().await {
            tracing::warn!(slot = %self.slot, peer = %self.conn.peer, error = %e, "close: sending CopyDone failed");
            return Err(e);
        }

        let conn = &mut self.conn;
        let drained = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, async {
            loop {
                let frame = conn.read_frame().await?;
                match frame.tag {
                    b'Z' => return Ok::<(), WalError>(()),
                    b'E' => {
                        // Logged by server_error; keep draining to the ReadyForQuery.
                        let _ = frame::server_error(&frame.body, "closing the replication stream");
                    }
                    // CopyData still in flight, CopyDone, CommandComplete, notices.
                    _ => {}
                }
            }
        })
        .await;
        match drained {
            Ok(Ok(())) => tracing::debug!(slot = %self.slot, "replication stream closed cleanly"),
            Ok(Err(WalError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!(slot = %self.slot, "server closed the connection during close");
            }
            Ok(Err(e)) => tracing::warn!(slot = %self.slot, error = %e, "close: error while draining"),
            Err(_) => tracing::warn!(slot = %self.slot, "close: server did not finish the COPY in time"),
        }

        frontend::terminate(&mut self.conn.wbuf);
        if let Err(e) = self.conn.flush_out().await {
            // The server may already have gone away after the drain; nothing is lost.
            tracing::debug!(slot = %self.slot, error = %e, "close: sending Terminate failed");
        }
        let _ = self.conn.io.shutdown().await;
        Ok(())
    }

    fn ensure_usable(&self) -> Result<(), WalError> {
        if self.broken {
            return Err(WalError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "replication stream failed earlier; reconnect",
            )));
        }
        Ok(())
    }

    /// Marks the stream dead and logs the error with context.
    fn fail(&mut self, e: WalError, context: &'static str) -> WalError {
        self.broken = true;
        tracing::warn!(slot = %self.slot, peer = %self.conn.peer, context, error = %e, "replication stream failed");
        e
    }

    fn queue_status(&mut self, reply_requested: bool) {
        let msg = frame::standby_status_update(self.flushed, pg_now_micros(), reply_requested);
        self.conn.queue_copy_data(&msg);
    }

    /// Turns one backend frame received while streaming into a message, `None` for frames
    /// that are skipped, or an error.
    fn handle_frame(&mut self, frame: Frame) -> Result<Option<ReplicationMessage>, WalError> {
        match frame.tag {
            b'd' => Ok(Some(match frame::parse_copy_data(&frame.body)? {
                CopyPayload::XLogData {
                    start,
                    end,
                    send_time,
                    data,
                } => ReplicationMessage::XLogData {
                    start,
                    end,
                    send_time,
                    data,
                },
                CopyPayload::Keepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                } => ReplicationMessage::Keepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                },
            })),
            b'N' => {
                let n = frame::parse_error_fields(&frame.body);
                tracing::debug!(slot = %self.slot, code = %n.code, message = %n.message, "server notice");
                Ok(None)
            }
            b'S' => {
                match frame::parse_parameter_status(&frame.body) {
                    Ok((name, value)) => tracing::debug!(%name, %value, "server parameter changed"),
                    Err(e) => tracing::debug!(error = %e, "unparsable ParameterStatus ignored"),
                }
                Ok(None)
            }
            b'E' => Err(frame::server_error(&frame.body, "streaming")),
            b'c' => Err(WalError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server ended the replication stream (CopyDone)",
            ))),
            // A walsender that shuts down once its client has caught up ends the COPY with
            // CommandComplete alone (walsender.c, WalSndDone): the server is going away,
            // like a closed connection, not a protocol violation.
            b'C' => Err(WalError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server ended the replication stream (CommandComplete: shutting down)",
            ))),
            other => Err(WalError::Protocol(format!(
                "unexpected backend message {:?} ({} bytes) while streaming",
                frame::printable(other),
                frame.body.len()
            ))),
        }
    }
}

/// Microseconds since 2000-01-01 UTC (the Postgres epoch) for status updates.
fn pg_now_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_sub(PG_EPOCH_OFFSET_SECS * 1_000_000),
        // A clock before 1970 is broken; the server only uses this for lag statistics.
        Err(_) => 0,
    }
}

/// A socket to the server: TCP or Unix domain.
enum Transport {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A buffered protocol connection.
struct Conn {
    io: Transport,
    /// Bytes received and not yet parsed (possibly a partial frame).
    rbuf: BytesMut,
    /// Encoded frontend messages not yet written (possibly partially written).
    wbuf: BytesMut,
    /// For logs: `host:port` or the socket path.
    peer: String,
    /// Major version from the `server_version` ParameterStatus (0 if unknown).
    server_major: u32,
}

impl Conn {
    fn new(io: Transport, peer: String) -> Self {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(MIN_READ),
            wbuf: BytesMut::new(),
            peer,
            server_major: 0,
        }
    }

    /// Reads more bytes into `rbuf`. Cancel safe (`read_buf` either stores what it read or
    /// reads nothing). EOF is an error: the protocol never ends with a half-open read side.
    async fn fill(&mut self) -> Result<(), WalError> {
        let want = frame::missing_bytes(&self.rbuf).clamp(MIN_READ, MAX_RESERVE);
        self.rbuf.reserve(want);
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(WalError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if self.rbuf.is_empty() {
                    "server closed the replication connection".to_owned()
                } else {
                    format!(
                        "server closed the replication connection mid-message ({} bytes buffered)",
                        self.rbuf.len()
                    )
                },
            )));
        }
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame, WalError> {
        loop {
            if let Some(f) = frame::parse_frame(&mut self.rbuf)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Writes everything queued in `wbuf`. Cancel safe: `write_buf` advances `wbuf` by what
    /// was written, so an interrupted call resumes where it stopped.
    async fn flush_out(&mut self) -> Result<(), WalError> {
        while !self.wbuf.is_empty() {
            let n = self.io.write_buf(&mut self.wbuf).await?;
            if n == 0 {
                return Err(WalError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "replication socket closed for writing",
                )));
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    fn queue_copy_data(&mut self, payload: &[u8]) {
        // CopyData::new only fails for payloads over i32::MAX bytes; ours are 34.
        match frontend::CopyData::new(payload) {
            Ok(m) => m.write(&mut self.wbuf),
            Err(e) => tracing::error!(error = %e, len = payload.len(), "could not encode CopyData"),
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), WalError> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| WalError::Config(format!("cannot send query {sql:?}: {e}")))?;
        self.flush_out().await
    }

    /// Runs one simple-protocol query (the only protocol a walsender accepts) and returns its
    /// rows as text. Reads through ReadyForQuery even after an error so the connection stays
    /// usable (the caller may treat some errors, like "slot exists", as success).
    async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WalError> {
        tracing::debug!(peer = %self.peer, sql, "replication command");
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => rows.push(frame::parse_data_row(&f.body)?),
                // RowDescription, CommandComplete, EmptyQueryResponse: nothing we need.
                b'T' | b'C' | b'I' => {}
                b'N' => {
                    let n = frame::parse_error_fields(&f.body);
                    tracing::debug!(code = %n.code, message = %n.message, sql, "server notice");
                }
                b'S' => self.note_parameter(&f.body),
                b'E' => {
                    let e = frame::server_error(&f.body, sql);
                    error.get_or_insert(e);
                }
                b'Z' => break,
                other => {
                    return Err(WalError::Protocol(format!(
                        "unexpected backend message {:?} in reply to {sql:?}",
                        frame::printable(other)
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    fn note_parameter(&mut self, body: &[u8]) {
        match frame::parse_parameter_status(body) {
            Ok((name, value)) => {
                if name == "server_version" {
                    self.server_major = parse_major(&value);
                }
                tracing::trace!(%name, %value, "server parameter");
            }
            Err(e) => tracing::debug!(error = %e, "unparsable ParameterStatus ignored"),
        }
    }
}

/// `15.18 (Debian ...)` → 15, `16devel` → 16, `9.6.1` → 9; 0 when there is no number.
fn parse_major(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// Where to connect: the config's hosts (or hostaddrs) paired with their ports.
enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    #[cfg(unix)]
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Mirrors tokio-postgres: `hostaddr` (an IP) wins over `host` at the same index; one port
/// for all hosts or one per host; default port 5432.
fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, WalError> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if hosts.is_empty() && addrs.is_empty() {
        return Err(WalError::Config("connection string has no host".into()));
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(WalError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    let n = hosts.len().max(addrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err(WalError::Config(format!("{} hosts but {} ports", n, ports.len())));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Target::Tcp {
                host: ip.to_string(),
                port,
            },
            (None, Some(Host::Tcp(h))) => Target::Tcp { host: h.clone(), port },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix { dir: dir.clone(), port },
            (None, None) => continue,
        };
        out.push(target);
    }
    Ok(out)
}

/// The startup parameters and credentials, validated once before any connection attempt.
struct SessionParams {
    user: String,
    database: String,
    application_name: Option<String>,
    options: String,
    password: Option<Vec<u8>>,
}

impl SessionParams {
    fn from_config(config: &tokio_postgres::Config, opts: &ReplicationOptions) -> Result<Self, WalError> {
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            // `Require` and any mode added later: refusing is the only safe answer.
            _ => {
                return Err(WalError::Config(
                    "sslmode=require: TLS is not supported yet by the replication client".into(),
                ))
            }
        }
        if config.get_channel_binding() == ChannelBindingMode::Require {
            return Err(WalError::Config(
                "channel_binding=require needs TLS, which is not supported yet".into(),
            ));
        }
        validate_slot_name(&opts.slot)?;
        if opts.publication.is_empty() {
            return Err(WalError::Config("publication name is empty".into()));
        }
        let user = config
            .get_user()
            .ok_or_else(|| WalError::Config("connection string has no user".into()))?
            .to_owned();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        let application_name = if opts.application_name.is_empty() {
            config.get_application_name().map(str::to_owned)
        } else {
            Some(opts.application_name.clone())
        };
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {FORMAT_OPTIONS}"),
            _ => FORMAT_OPTIONS.to_owned(),
        };
        for (what, v) in [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("application_name", application_name.as_deref().unwrap_or("")),
            ("options", options.as_str()),
            ("publication", opts.publication.as_str()),
        ] {
            if v.contains('\0') {
                return Err(WalError::Config(format!("{what} contains a NUL byte")));
            }
        }
        Ok(SessionParams {
            user,
            database,
            application_name,
            options,
            password: config.get_password().map(<[u8]>::to_vec),
        })
    }

    fn password(&self, method: &str) -> Result<&[u8], WalError> {
        self.password.as_deref().ok_or_else(|| {
            tracing::warn!(user = %self.user, method, "server wants a password but none is configured");
            WalError::Auth(format!(
                "server requested {method} authentication but no password was given"
            ))
        })
    }
}

/// Postgres accepts only these slot names; checking here gives a clear configuration error
/// instead of a server error after connecting.
fn validate_slot_name(slot: &str) -> Result<(), WalError> {
    if slot.is_empty() || slot.len() > 63 {
        return Err(WalError::Config(format!(
            "replication slot name {slot:?} must be 1 to 63 bytes"
        )));
    }
    if !slot
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(WalError::Config(format!(
            "replication slot name {slot:?} may contain only lowercase letters, digits and underscores"
        )));
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled (the walsender grammar's quoted identifier).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded single quotes doubled (the walsender grammar has no backslash
/// escapes in string literals).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn connect_socket(target: &Target, timeout: Option<Duration>) -> Result<Conn, WalError> {
    async fn bounded<T>(
        timeout: Option<Duration>,
        fut: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {t:?}")))?,
            None => fut.await,
        }
    }
    match target {
        Target::Tcp { host, port } => {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port)).await?.collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"));
            for addr in addrs {
                match bounded(timeout, TcpStream::connect(addr)).await {
                    Ok(s) => {
                        // Status updates are tiny and latency-sensitive; don't let Nagle hold them.
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY");
                        }
                        return Ok(Conn::new(Transport::Tcp(s), format!("{addr}")));
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "TCP connect failed");
                        last = e;
                    }
                }
            }
            Err(WalError::Io(last))
        }
        #[cfg(unix)]
        Target::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = bounded(timeout, UnixStream::connect(&path)).await?;
            Ok(Conn::new(Transport::Unix(s), path.display().to_string()))
        }
    }
}

/// Socket + startup + authentication, through the first ReadyForQuery.
async fn open_session(target: &Target, timeout: Option<Duration>, p: &SessionParams) -> Result<Conn, WalError> {
    let mut conn = connect_socket(target, timeout).await?;

    let mut params: Vec<(&str, &str)> = vec![
        // pgoutput converts text values and names to the client encoding.
        ("client_encoding", "UTF8"),
        ("user", &p.user),
        ("database", &p.database),
        // Logical replication walsender bound to the database.
        ("replication", "database"),
        ("options", &p.options),
    ];
    if let Some(app) = &p.application_name {
        params.push(("application_name", app));
    }
    frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
        .map_err(|e| WalError::Config(format!("invalid startup parameter: {e}")))?;
    conn.flush_out().await?;

    authenticate(&mut conn, p).await?;

    // ParameterStatus and BackendKeyData until the server is ready.
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'S' => conn.note_parameter(&f.body),
            // BackendKeyData: cancel requests are not used.
            b'K' => {}
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "startup notice");
            }
            b'E' => return Err(frame::server_error(&f.body, "startup")),
            b'Z' => break,
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} during startup",
                    frame::printable(other)
                )))
            }
        }
    }
    tracing::info!(peer = %conn.peer, user = %p.user, database = %p.database, server_major = conn.server_major,
        "replication connection established");
    Ok(conn)
}

async fn authenticate(conn: &mut Conn, p: &SessionParams) -> Result<(), WalError> {
    let mut scram: Option<ScramSha256> = None;
    let mut scram_verified = false;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'R' => {}
            b'E' => return Err(frame::server_error(&f.body, "authentication")),
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "authentication notice");
                continue;
            }
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} during authentication",
                    frame::printable(other)
                )))
            }
        }
        match frame::parse_auth(&f.body)? {
            AuthRequest::Ok => {
                // A server that skips SASLFinal never proved it knows the password (it could
                // be an impostor that just accepts anything).
                if scram.is_some() && !scram_verified {
                    tracing::warn!(peer = %conn.peer, "server ended SCRAM without its final message");
                    return Err(WalError::Auth("server skipped the SCRAM final message".into()));
                }
                tracing::debug!(peer = %conn.peer, "authenticated");
                return Ok(());
            }
            AuthRequest::CleartextPassword => {
                let pw = p.password("cleartext password")?;
                frontend::password_message(pw, &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode password: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::Md5Password { salt } => {
                let pw = p.password("MD5")?;
                let hash = md5_hash(p.user.as_bytes(), pw, salt);
                frontend::password_message(hash.as_bytes(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode password: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    tracing::warn!(?mechanisms, "no supported SASL mechanism offered");
                    return Err(WalError::Auth(format!("unsupported SASL mechanisms {mechanisms:?}")));
                }
                let pw = p.password("SCRAM-SHA-256")?;
                // Without TLS there is no channel to bind to: "n,," tells the server so.
                let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode SASL message: {e}")))?;
                conn.flush_out().await?;
                scram = Some(s);
            }
            AuthRequest::SaslContinue { data } => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| WalError::Protocol("SASLContinue before SASL started".into()))?;
                s.update(&data).map_err(|e| {
                    tracing::warn!(error = %e, "SCRAM server-first message rejected");
                    WalError::Auth(format!("SCRAM: {e}"))
                })?;
                frontend::sasl_response(s.message(), &mut conn.wbuf)
                    .map_err(|e| WalError::Auth(format!("cannot encode SASL message: {e}")))?;
                conn.flush_out().await?;
            }
            AuthRequest::SaslFinal { data } => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| WalError::Protocol("SASLFinal before SASL started".into()))?;
                s.finish(&data).map_err(|e| {
                    tracing::warn!(error = %e, "SCRAM server signature verification failed");
                    WalError::Auth(format!("SCRAM server verification failed: {e}"))
                })?;
                scram_verified = true;
            }
            AuthRequest::Other(code) => {
                tracing::warn!(code, "unsupported authentication method requested");
                return Err(WalError::Auth(format!(
                    "unsupported authentication method (code {code}); use trust, password, md5 or scram-sha-256"
                )));
            }
        }
    }
}

async fn identify_system(conn: &mut Conn) -> Result<(), WalError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let cell = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i))
            .cloned()
            .flatten()
            .unwrap_or_default()
    };
    if rows.len() != 1 {
        tracing::warn!(
            rows = rows.len(),
            "IDENTIFY_SYSTEM returned an unexpected number of rows"
        );
    }
    tracing::info!(systemid = %cell(0), timeline = %cell(1), xlogpos = %cell(2), dbname = %cell(3), "IDENTIFY_SYSTEM");
    Ok(())
}

async fn create_slot(conn: &mut Conn, opts: &ReplicationOptions) -> Result<(), WalError> {
    let temporary = if opts.temporary_slot { "TEMPORARY " } else { "" };
    // PG15 introduced the parenthesized option list; older servers only know the legacy
    // keyword (which PG15+ still accept, but the modern form is the documented one).
    let snapshot = if conn.server_major == 0 || conn.server_major >= 15 {
        "(SNAPSHOT 'nothing')"
    } else {
        "NOEXPORT_SNAPSHOT"
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput {snapshot}",
        quote_ident(&opts.slot)
    );
    match conn.simple_query(&sql).await {
        Ok(rows) => {
            let consistent_point = rows
                .first()
                .and_then(|r| r.get(1))
                .cloned()
                .flatten()
                .unwrap_or_default();
            tracing::info!(
                slot = %opts.slot,
                temporary = opts.temporary_slot,
                %consistent_point,
                "replication slot created"
            );
            Ok(())
        }
        // 42710 duplicate_object: the slot exists (e.g. a persistent slot from a previous
        // run), which is exactly what a resuming consumer wants.
        Err(WalError::Server { code, .. }) if code == "42710" => {
            tracing::info!(slot = %opts.slot, "replication slot already exists; reusing it");
            Ok(())
        }
        Err(e) => {
            tracing::error!(slot = %opts.slot, error = %e, "could not create replication slot");
            Err(e)
        }
    }
}

async fn start_replication(conn: &mut Conn, opts: &ReplicationOptions) -> Result<(), WalError> {
    // publication_names is a string literal holding a comma-separated identifier list, so the
    // name is quoted as an identifier first, then as a literal. 0/0 = resume from the slot's
    // confirmed_flush_lsn.
    let sql = format!(
        "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
        quote_ident(&opts.slot),
        quote_literal(&quote_ident(&opts.publication))
    );
    tracing::debug!(peer = %conn.peer, sql, "starting replication");
    conn.send_query(&sql).await?;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'W' => break,
            b'N' => {
                let n = frame::parse_error_fields(&f.body);
                tracing::debug!(code = %n.code, message = %n.message, "START_REPLICATION notice");
            }
            b'S' => conn.note_parameter(&f.body),
            b'E' => {
                let e = frame::server_error(&f.body, "START_REPLICATION");
                tracing::error!(
                    slot = %opts.slot,
                    publication = %opts.publication,
                    error = %e,
                    "START_REPLICATION failed"
                );
                return Err(e);
            }
            other => {
                return Err(WalError::Protocol(format!(
                    "unexpected backend message {:?} in reply to START_REPLICATION",
                    frame::printable(other)
                )))
            }
        }
    }
    tracing::info!(
        slot = %opts.slot,
        publication = %opts.publication,
        peer = %conn.peer,
        "logical replication streaming"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("supabase_realtime"), "\"supabase_realtime\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal(&quote_ident("it's")), "'\"it''s\"'");
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("realtime_rs").is_ok());
        assert!(validate_slot_name("a1_").is_ok());
        for bad in ["", "Upper", "with-dash", "sp ace", "quo\"te", &"x".repeat(64)] {
            assert!(matches!(validate_slot_name(bad), Err(WalError::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn server_major_versions() {
        assert_eq!(parse_major("15.18 (Debian 15.18-1.pgdg120+1)"), 15);
        assert_eq!(parse_major("16devel"), 16);
        assert_eq!(parse_major("9.6.1"), 9);
        assert_eq!(parse_major(""), 0);
    }

    #[test]
    fn pg_clock_is_after_2020() {
        // 2020-01-01 is 631152000 s after 2000-01-01.
        assert!(pg_now_micros() > 631_152_000 * 1_000_000);
    }

    fn opts() -> ReplicationOptions {
        ReplicationOptions {
            slot: "realtime_rs".into(),
            publication: "supabase_realtime".into(),
            temporary_slot: true,
            application_name: "realtime-rs".into(),
        }
    }

    #[test]
    fn session_params_from_urls() {
        let c: tokio_postgres::Config = "postgres://u:pw@h:1/db?options=-c%20work_mem%3D1MB".parse().unwrap();
        let p = SessionParams::from_config(&c, &opts()).unwrap();
        assert_eq!((p.user.as_str(), p.database.as_str()), ("u", "db"));
        assert_eq!(p.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(p.application_name.as_deref(), Some("realtime-rs"));
        assert!(
            p.options.starts_with("-c work_mem=1MB -c DateStyle=ISO"),
            "{}",
            p.options
        );

        let c: tokio_postgres::Config = "postgres://u@h/".parse().unwrap();
        assert_eq!(SessionParams::from_config(&c, &opts()).unwrap().database, "u");

        let c: tokio_postgres::Config = "postgres://u@h/db?sslmode=require".parse().unwrap();
        assert!(matches!(SessionParams::from_config(&c, &opts()), Err(WalError::Config(m)) if m.contains("TLS")));

        let c: tokio_postgres::Config = "host=h".parse().unwrap();
        assert!(matches!(
            SessionParams::from_config(&c, &opts()),
            Err(WalError::Config(_))
        ));
    }

    #[test]
    fn targets_follow_tokio_postgres_rules() {
        let c: tokio_postgres::Config = "host=a,/tmp/sock,b port=1,2,3 user=u".parse().unwrap();
        let t: Vec<String> = targets(&c).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(t, ["a:1", "/tmp/sock/.s.PGSQL.2", "b:3"]);
        let c: tokio_postgres::Config = "host=a,b user=u".parse().unwrap();
        let t: Vec<String> = targets(&c).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(t, ["a:5432", "b:5432"]);
        let c: tokio_postgres::Config = "host=a,b port=1,2,3 user=u".parse().unwrap();
        assert!(targets(&c).is_err());
        let c: tokio_postgres::Config = "user=u".parse().unwrap();
        assert!(targets(&c).is_err());
        let c: tokio_postgres::Config = "host=name hostaddr=127.0.0.1 port=7 user=u".parse().unwrap();
        let t: Vec<String> = targets(&c).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(t, ["127.0.0.1:7"]);
    }

    /// recv over an in-process socket pair fed with hand-made frames, including frames split
    /// at every byte and a cancelled recv in the middle of one.
    #[tokio::test]
    async fn recv_over_a_socket_pair() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut stream = ReplicationStream {
            conn: Conn::new(Transport::Unix(client), "pair".into()),
            flushed: Lsn(0),
            pending: None,
            broken: false,
            slot: "t".into(),
        };
        stream.set_flushed(Lsn(0x500));
        stream.set_flushed(Lsn(0x400)); // never backwards
        assert_eq!(stream.flushed(), Lsn(0x500));

        let mut wire = Vec::new();
        let push = |wire: &mut Vec<u8>, tag: u8, body: &[u8]| {
            wire.push(tag);
            wire.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            wire.extend_from_slice(body);
        };
        let mut x = vec![b'w'];
        x.extend_from_slice(&1u64.to_be_bytes());
        x.extend_from_slice(&2u64.to_be_bytes());
        x.extend_from_slice(&3i64.to_be_bytes());
        x.extend_from_slice(b"Bpayload");
        push(&mut wire, b'd', &x);
        push(&mut wire, b'N', b"SNOTICE\0C00000\0Mhello\0\0");
        push(&mut wire, b'S', b"TimeZone\0UTC\0");
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&10i64.to_be_bytes());
        k.push(1);
        push(&mut wire, b'd', &k);
        push(
            &mut wire,
            b'E',
            b"SERROR\0C42704\0Mpublication \"p\" does not exist\0\0",
        );

        // Dribble the bytes one at a time while recv is repeatedly cancelled.
        let writer = tokio::spawn(async move {
            for b in wire {
                server.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // Read back the keepalive reply.
            let mut reply = vec![0u8; 1 + 4 + 34];
            server.read_exact(&mut reply).await.unwrap();
            reply
        });

        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            // Drop the recv future after one poll: it is cancelled mid-frame almost every time.
            let res = {
                let mut fut = std::pin::pin!(stream.recv());
                std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
            };
            match res {
                Poll::Pending => tokio::time::sleep(Duration::from_micros(100)).await,
                Poll::Ready(Ok(m)) => got.push(m),
                Poll::Ready(Err(e)) => {
                    assert!(
                        matches!(e, WalError::Server { ref code, .. } if code == "42704"),
                        "{e:?}"
                    );
                    break;
                }
            }
        }
        assert_eq!(
            got,
            vec![
                ReplicationMessage::XLogData {
                    start: Lsn(1),
                    end: Lsn(2),
                    send_time: 3,
                    data: Bytes::from_static(b"Bpayload")
                },
                ReplicationMessage::Keepalive {
                    wal_end: Lsn(9),
                    send_time: 10,
                    reply_requested: true
                },
            ]
        );
        let reply = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply[0], b'd');
        assert_eq!(reply[5], b'r');
        assert_eq!(&reply[6..14], &0x500u64.to_be_bytes());
        assert_eq!(reply[38], 0);
        // Dead after an error.
        assert!(matches!(stream.recv().await, Err(WalError::Io(e)) if e.kind() == io::ErrorKind::NotConnected));
    }

    /// A walsender shutting down ends the COPY with CommandComplete alone: the stream is
    /// over and reconnecting helps (a transient error), unlike a protocol violation.
    #[tokio::test]
    async fn command_complete_at_shutdown_is_a_transient_end_of_stream() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut stream = ReplicationStream {
            conn: Conn::new(Transport::Unix(client), "pair".into()),
            flushed: Lsn(0),
            pending: None,
            broken: false,
            slot: "t".into(),
        };
        let mut wire = vec![b'C'];
        wire.extend_from_slice(&11u32.to_be_bytes());
        wire.extend_from_slice(b"COPY 0\0");
        server.write_all(&wire).await.unwrap();
        let e = stream.recv().await.unwrap_err();
        assert!(
            matches!(&e, WalError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );
        assert!(e.is_transient());
    }
}
