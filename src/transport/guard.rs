//! The read side of a connection below fastwebsockets: enforces the message size limit
//! before anything is buffered, and hands bytes up one frame at a time so that an idle
//! connection holds no read buffer.
//!
//! fastwebsockets 0.10 does not enforce `max_message_size`: it reserves buffer space for
//! whatever length a frame header announces, so a client claiming a 2^60-byte frame
//! would make the process abort on allocation. This adapter parses each frame header
//! (RFC 6455 §5.2) as the bytes pass and fails the read as soon as a frame, or a
//! fragmented message in total, is over the limit.
//!
//! It also refuses unmasked client frames (RFC 6455 §5.1), which fastwebsockets reads.
//!
//! Its second job is memory. fastwebsockets' reader owns an 8 KB buffer for its whole
//! life, which would be most of an idle connection's footprint. Because this adapter never
//! hands up a byte past the end of the frame being read, fastwebsockets' buffer is empty
//! whenever it has returned a frame; the connection can then drop the reader and build a
//! new one when the next bytes arrive ([`FrameGuard::fill`] waits for them without any
//! buffer). Bytes read past a frame's end wait in a small stash, allocated only while
//! they exist.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
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

/// The read error for a client frame without a mask (RFC 6455 §5.1: the server closes the
/// connection, with 1002).
#[derive(Debug)]
pub struct UnmaskedFrame;

impl std::fmt::Display for UnmaskedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unmasked client frame")
    }
}

impl std::error::Error for UnmaskedFrame {}

/// Socket reads go through a stack buffer of this size (never held across an await).
const CHUNK: usize = 8 * 1024;

/// Where the guard is in the frame stream.
#[derive(Debug)]
enum State {
    /// Collecting a header (2 to 14 bytes).
    Header { buf: [u8; 14], have: usize },
    /// Passing this many payload bytes.
    Payload { remaining: u64 },
}

/// The frame-by-frame view of the byte stream: sizes and limits, no data.
#[derive(Debug)]
struct Framing {
    state: State,
    max_message: u64,
    /// Bytes of the data message being assembled from fragments.
    message_total: u64,
}

impl Framing {
    /// Takes bytes of the current frame from the start of `bytes`; returns how many
    /// belong to it (all of them, or up to and including its last byte).
    fn scan(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        while used < bytes.len() {
            match &mut self.state {
                State::Payload { remaining } => {
                    let n = (*remaining).min((bytes.len() - used) as u64);
                    *remaining -= n;
                    used += n as usize;
                    if *remaining == 0 {
                        self.state = State::Header { buf: [0; 14], have: 0 };
                        return Ok(used);
                    }
                }
                State::Header { buf, have } => {
                    buf[*have] = bytes[used];
                    *have += 1;
                    used += 1;
                    if *have < 2 {
                        continue;
                    }
                    // fastwebsockets unmasks when a key is present but accepts frames
                    // without one; a client must always mask.
                    if buf[1] & 0x80 == 0 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, UnmaskedFrame));
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
                    if len == 0 {
                        self.state = State::Header { buf: [0; 14], have: 0 };
                        return Ok(used);
                    }
                    self.state = State::Payload { remaining: len };
                }
            }
        }
        Ok(used)
    }

    /// How many bytes a socket read may take without going past the current frame
    /// (unknown while its header is incomplete: then a whole chunk).
    fn read_limit(&self) -> usize {
        match self.state {
            State::Payload { remaining } => usize::try_from(remaining).unwrap_or(usize::MAX).min(CHUNK),
            State::Header { .. } => CHUNK,
        }
    }
}

/// Wraps the read half of an upgraded connection.
#[derive(Debug)]
pub struct FrameGuard<R> {
    inner: R,
    framing: Framing,
    /// Bytes read from the socket but not handed up yet (they belong to later frames).
    stash: BytesMut,
}

impl<R> FrameGuard<R> {
    /// Limits every message (one frame, or the sum of its fragments) to `max_message` bytes.
    pub fn new(inner: R, max_message: usize) -> Self {
        FrameGuard {
            inner,
            framing: Framing {
                state: State::Header { buf: [0; 14], have: 0 },
                max_message: max_message as u64,
                message_total: 0,
            },
            stash: BytesMut::new(),
        }
    }

    /// The message size limit, in bytes.
    pub fn max_message(&self) -> usize {
        usize::try_from(self.framing.max_message).unwrap_or(usize::MAX)
    }

    /// Moves up to `max` stashed bytes of the current frame into `buf`.
    fn take_stashed(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let max = self.stash.len().min(buf.remaining());
        let n = self.framing.scan(&self.stash[..max])?;
        buf.put_slice(&self.stash[..n]);
        self.stash.advance(n);
        if self.stash.is_empty() {
            // Free the allocation: idle connections keep nothing.
            self.stash = BytesMut::new();
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> FrameGuard<R> {
    /// Reads once from the socket into a stack buffer; `Ready(Ok(n))` with the bytes.
    fn poll_chunk<'a>(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &'a mut [u8; CHUNK],
        limit: usize,
    ) -> Poll<io::Result<&'a [u8]>> {
        let limit = limit.clamp(1, CHUNK);
        let mut rb = ReadBuf::new(&mut chunk[..limit]);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                Poll::Ready(Ok(&chunk[..n]))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits until bytes are available, without holding a buffer while waiting.
    /// `Ok(false)`: the peer closed the stream.
    pub async fn fill(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            if !self.stash.is_empty() {
                return Poll::Ready(Ok(true));
            }
            let mut chunk = [0u8; CHUNK];
            match self.poll_chunk(cx, &mut chunk, CHUNK) {
                Poll::Ready(Ok(read)) => {
                    let open = !read.is_empty();
                    self.stash = BytesMut::from(read);
                    Poll::Ready(Ok(open))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameGuard<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.stash.is_empty() {
            return Poll::Ready(this.take_stashed(buf));
        }
        let mut chunk = [0u8; CHUNK];
        let limit = this.framing.read_limit().min(buf.remaining());
        let read = match this.poll_chunk(cx, &mut chunk, limit) {
            Poll::Ready(Ok(read)) => read,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // What goes past the current frame (or past `buf`) waits in the stash.
        let n = this.framing.scan(&read[..read.len().min(buf.remaining())])?;
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.stash = BytesMut::from(&read[n..]);
        }
        Poll::Ready(Ok(()))
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

    /// Feeds `bytes` to the framing; returns the offsets where frames ended.
    fn frame_ends(f: &mut Framing, bytes: &[u8], base: usize) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            at += f.scan(&bytes[at..]).unwrap();
            if matches!(f.state, State::Header { have: 0, .. }) {
                ends.push(base + at);
            }
        }
        ends
    }

    #[test]
    fn finds_every_frame_end_at_the_limit_split_anywhere() {
        let mut stream = header(1, true, 100);
        stream.extend(vec![0u8; 100]);
        stream.extend(header(9, true, 4));
        stream.extend([0u8; 4]);
        stream.extend(header(10, true, 0));
        for split in 0..stream.len() {
            let mut g = FrameGuard::new((), 100);
            let mut ends = frame_ends(&mut g.framing, &stream[..split], 0);
            ends.extend(frame_ends(&mut g.framing, &stream[split..], split));
            assert_eq!(ends, vec![106, 116, 122], "split at {split}");
        }
    }

    #[tokio::test]
    async fn reads_never_cross_a_frame_end_and_idle_guards_hold_no_buffer() {
        use tokio::io::AsyncReadExt;
        let mut stream = header(1, true, 3);
        stream.extend(b"abc");
        stream.extend(header(2, true, 200));
        stream.extend(vec![7u8; 200]);
        let mut g = FrameGuard::new(&stream[..], 1000);
        assert!(g.fill().await.unwrap());
        let mut buf = vec![0u8; 4096];
        // The first read stops after frame one, though the whole stream was available.
        assert_eq!(g.read(&mut buf).await.unwrap(), 9);
        assert_eq!(g.read(&mut buf).await.unwrap(), 8 + 200);
        assert_eq!(g.stash.capacity(), 0, "an emptied stash is freed");
        assert!(!g.fill().await.unwrap(), "end of stream");
    }

    #[test]
    fn refuses_a_huge_announced_length_before_any_payload() {
        let mut g = FrameGuard::new((), 5_000_000);
        assert!(g.framing.scan(&header(2, true, 1 << 60)).is_err());
        let mut g = FrameGuard::new((), 5_000_000);
        assert!(g.framing.scan(&header(1, true, 5_000_001)).is_err());
    }

    #[test]
    fn refuses_unmasked_frames_at_the_second_byte() {
        let mut g = FrameGuard::new((), 100);
        let err = g.framing.scan(&[0x81, 0x02, b'[', b']']).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<UnmaskedFrame>()));
        let mut g = FrameGuard::new((), 100);
        assert_eq!(g.framing.scan(&[0x81]).unwrap(), 1, "one byte cannot tell yet");
        assert!(g.framing.scan(&[0x02]).is_err());
    }

    #[test]
    fn refuses_fragmented_messages_over_the_limit() {
        let mut g = FrameGuard::new((), 100);
        let mut s = header(1, false, 60);
        s.extend(vec![0u8; 60]);
        g.framing.scan(&s).unwrap();
        assert!(g.framing.scan(&header(0, true, 60)).is_err());
    }
}
