//! The logical replication connection: startup with `replication=database`, authentication,
//! `IDENTIFY_SYSTEM`, slot creation, `START_REPLICATION`, CopyBoth framing, keepalives and
//! standby status updates.
//!
//! Why hand-written: crates.io `tokio-postgres` has no replication mode (no `replication`
//! startup parameter, no CopyBoth), and `postgres-protocol`'s backend parser rejects the
//! CopyBothResponse tag `W`. So `tokio_postgres::Config` is used only to parse the connection
//! string, `postgres-protocol` only to encode frontend messages and run SCRAM/MD5, and the
//! backend framing lives in [`frame`] (pure, unit-tested, never panics on input). The socket
//! and its buffers are in [`socket`], startup and authentication in [`session`], the
//! replication commands in [`commands`]; this file is the stream's API.
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

mod commands;
mod frame;
mod session;
mod socket;

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

use self::commands::*;
use self::frame::{AuthRequest, CopyPayload, Frame};
use self::session::*;
use self::socket::*;
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
