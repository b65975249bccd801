//! A read-side guard that enforces the WebSocket message size limit *before* frames are
//! buffered.
//!
//! fastwebsockets 0.10 does not enforce `max_message_size`: it reserves buffer space for
//! whatever length a frame header announces, so a client claiming a 2^60-byte frame
//! would make the process abort on allocation. This adapter watches the byte stream as
//! it passes, parses each frame header (RFC 6455 §5.2) and fails the read as soon as a
//! frame, or a fragmented message in total, is over the limit.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The read error for a message over the limit (the connection closes with 1009).
#[derive(Debug)]
pub struct MessageTooBig(pub u64);

impl std::fmt::Display for MessageTooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket message over {} bytes", self.0)
    }
}

impl std::error::Error for MessageTooBig {}

/// Where the guard is in the frame stream.
#[derive(Debug)]
enum State {
    /// Collecting a header (2 to 14 bytes).
    Header { buf: [u8; 14], have: usize },
    /// Skipping this many payload bytes.
    Payload { remaining: u64 },
}

/// Wraps the read half of an upgraded connection.
#[derive(Debug)]
pub struct FrameGuard<R> {
    inner: R,
    state: State,
    max_message: u64,
    /// Bytes of the data message being assembled from fragments.
    message_total: u64,
}

impl<R> FrameGuard<R> {
    /// Limits every message (one frame, or the sum of its fragments) to `max_message` bytes.
    pub fn new(inner: R, max_message: usize) -> Self {
        FrameGuard {
            inner,
            state: State::Header { buf: [0; 14], have: 0 },
            max_message: max_message as u64,
            message_total: 0,
        }
    }

    fn scan(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Payload { remaining } => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    bytes = &bytes[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Header { buf: [0; 14], have: 0 };
                    }
                }
                State::Header { buf, have } => {
                    buf[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    if *have < 2 {
                        continue;
                    }
                    let ext = match buf[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let masked = if buf[1] & 0x80 != 0 { 4 } else { 0 };
                    if *have < 2 + ext + masked {
                        continue;
                    }
                    let len = match ext {
                        0 => u64::from(buf[1] & 0x7f),
                        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                        _ => u64::from_be_bytes([buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9]]),
                    };
                    let opcode = buf[0] & 0x0f;
                    match opcode {
                        0 => self.message_total = self.message_total.saturating_add(len),
                        1 | 2 => self.message_total = len,
                        // Control frames do not belong to the data message.
                        _ => {}
                    }
                    if len > self.max_message || self.message_total > self.max_message {
                        crate::observability::metrics::frame_too_large(self.max_message);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            MessageTooBig(self.max_message),
                        ));
                    }
                    self.state = if len == 0 {
                        State::Header { buf: [0; 14], have: 0 }
                    } else {
                        State::Payload { remaining: len }
                    };
                }
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameGuard<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scan(&buf.filled()[before..])?;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=65535 => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn accepts_frames_at_the_limit_split_anywhere() {
        let mut stream = header(1, true, 100);
        stream.extend(vec![0u8; 100]);
        stream.extend(header(9, true, 4));
        stream.extend([0u8; 4]);
        for split in 0..stream.len() {
            let mut g = FrameGuard::new((), 100);
            g.scan(&stream[..split]).unwrap();
            g.scan(&stream[split..]).unwrap();
        }
    }

    #[test]
    fn refuses_a_huge_announced_length_before_any_payload() {
        let mut g = FrameGuard::new((), 5_000_000);
        assert!(g.scan(&header(2, true, 1 << 60)).is_err());
        let mut g = FrameGuard::new((), 5_000_000);
        assert!(g.scan(&header(1, true, 5_000_001)).is_err());
    }

    #[test]
    fn refuses_fragmented_messages_over_the_limit() {
        let mut g = FrameGuard::new((), 100);
        let mut s = header(1, false, 60);
        s.extend(vec![0u8; 60]);
        g.scan(&s).unwrap();
        assert!(g.scan(&header(0, true, 60)).is_err());
    }
}
