//! The socket under a replication session: TCP or Unix transport, buffered frame reads,
//! queued writes, simple queries, and the server parameters it reports.

use super::*;

/// A socket to the server: TCP or Unix domain.
pub(super) enum Transport {
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
pub(super) struct Conn {
    pub(super) io: Transport,
    /// Bytes received and not yet parsed (possibly a partial frame).
    pub(super) rbuf: BytesMut,
    /// Encoded frontend messages not yet written (possibly partially written).
    pub(super) wbuf: BytesMut,
    /// For logs: `host:port` or the socket path.
    pub(super) peer: String,
    /// Major version from the `server_version` ParameterStatus (0 if unknown).
    pub(super) server_major: u32,
}

impl Conn {
    pub(super) fn new(io: Transport, peer: String) -> Self {
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
    pub(super) async fn fill(&mut self) -> Result<(), WalError> {
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

    pub(super) async fn read_frame(&mut self) -> Result<Frame, WalError> {
        loop {
            if let Some(f) = frame::parse_frame(&mut self.rbuf)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Writes everything queued in `wbuf`. Cancel safe: `write_buf` advances `wbuf` by what
    /// was written, so an interrupted call resumes where it stopped.
    pub(super) async fn flush_out(&mut self) -> Result<(), WalError> {
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

    pub(super) fn queue_copy_data(&mut self, payload: &[u8]) {
        // CopyData::new only fails for payloads over i32::MAX bytes; ours are 34.
        match frontend::CopyData::new(payload) {
            Ok(m) => m.write(&mut self.wbuf),
            Err(e) => tracing::error!(error = %e, len = payload.len(), "could not encode CopyData"),
        }
    }

    pub(super) async fn send_query(&mut self, sql: &str) -> Result<(), WalError> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| WalError::Config(format!("cannot send query {sql:?}: {e}")))?;
        self.flush_out().await
    }

    /// Runs one simple-protocol query (the only protocol a walsender accepts) and returns its
    /// rows as text. Reads through ReadyForQuery even after an error so the connection stays
    /// usable (the caller may treat some errors, like "slot exists", as success).
    pub(super) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WalError> {
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

    pub(super) fn note_parameter(&mut self, body: &[u8]) {
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
pub(super) fn parse_major(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}
