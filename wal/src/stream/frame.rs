//! Backend message framing and the few backend/CopyData bodies the replication client reads.
//!
//! Everything here is pure (bytes in, values out) so it can be unit-tested and fuzzed without a
//! server. `postgres_protocol::message::backend::Message::parse` is not used because it rejects
//! the CopyBothResponse tag `W` that every replication session needs.
//!
//! Every read is bounds-checked: malformed input yields `WalError::Protocol`, never a panic.

use bytes::{Buf, Bytes, BytesMut};

use crate::lsn::Lsn;
use crate::WalError;

/// Largest backend message body accepted (the length field, which counts itself).
///
/// The walsender builds each CopyData payload in one `StringInfo`, which Postgres caps at
/// `MaxAllocSize` (1 GiB - 1), so a larger length can only be corruption or a hostile peer; it
/// must become an error, not a 1 GiB allocation.
pub(crate) const MAX_FRAME_LEN: usize = (1 << 30) + 64;

/// Size of a frame header: tag byte + u32 length.
pub(crate) const HEADER_LEN: usize = 5;

/// One complete backend message: its tag and its body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Parses the length of the frame at the start of `buf` without consuming anything.
///
/// Returns `Ok(Some(total))` (tag + length + body) once the header is complete, `Ok(None)` when
/// fewer than 5 bytes are buffered, and an error for a length that cannot be valid.
pub(crate) fn frame_total_len(buf: &[u8]) -> Result<Option<usize>, WalError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    // The length includes its own four bytes, so anything smaller is impossible.
    if len < 4 {
        tracing::warn!(tag = %printable(tag), len, "backend frame length below 4");
        return Err(WalError::Protocol(format!(
            "backend message {:?} has invalid length {len}",
            printable(tag)
        )));
    }
    if len > MAX_FRAME_LEN {
        tracing::warn!(tag = %printable(tag), len, max = MAX_FRAME_LEN, "backend frame too large");
        return Err(WalError::Protocol(format!(
            "backend message {:?} claims {len} bytes (limit {MAX_FRAME_LEN})",
            printable(tag)
        )));
    }
    Ok(Some(1 + len))
}

/// Removes one complete frame from the front of `buf`, or returns `Ok(None)` (consuming
/// nothing) when the buffered bytes do not yet hold a whole frame.
///
/// Never consuming a partial frame is what makes the caller's read loop cancel safe: bytes read
/// so far stay in `buf` whatever happens to the future that read them.
pub(crate) fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WalError> {
    let Some(total) = frame_total_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let tag = frame[0];
    frame.advance(HEADER_LEN);
    Ok(Some(Frame { tag, body: frame }))
}

/// How many more bytes the frame at the front of `buf` needs (0 when unknown or complete).
pub(crate) fn missing_bytes(buf: &[u8]) -> usize {
    match frame_total_len(buf) {
        Ok(Some(total)) => total.saturating_sub(buf.len()),
        _ => 0,
    }
}

/// A printable form of a tag byte for messages and logs.
pub(crate) fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        (tag as char).to_string()
    } else {
        format!("0x{tag:02x}")
    }
}

/// A bounds-checked cursor over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn short(&self, need: usize) -> WalError {
        WalError::Protocol(format!(
            "{} truncated: needed {need} more bytes, {} left",
            self.what,
            self.buf.len()
        ))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WalError> {
        if self.buf.len() < n {
            return Err(self.short(n));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WalError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WalError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn i16(&mut self) -> Result<i16, WalError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, WalError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, WalError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, WalError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string (lossily decoded: these are diagnostics and catalog names
    /// sent with client_encoding=UTF8).
    pub fn cstr(&mut self) -> Result<String, WalError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(WalError::Protocol(format!("{}: unterminated string", self.what)));
        };
        let s = String::from_utf8_lossy(&self.buf[..nul]).into_owned();
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }
}

/// The fields of an ErrorResponse / NoticeResponse this client cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Parses an ErrorResponse / NoticeResponse body: (type byte, C string)* then a 0 byte.
///
/// Lenient on purpose: a missing terminator or unknown field types still yield whatever was
/// parsed, because losing the server's error text to a pedantic parser helps nobody.
pub(crate) fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(kind) = r.u8() {
        if kind == 0 {
            break;
        }
        let Ok(value) = r.cstr() else { break };
        match kind {
            // 'V' is the non-localized severity (9.6+); prefer it over 'S'.
            b'S' if out.severity.is_empty() => out.severity = value,
            b'V' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            _ => {}
        }
    }
    if out.code.is_empty() {
        // Every real ErrorResponse has a SQLSTATE; XX000 (internal_error) keeps
        // `is_transient` conservative (false) for a malformed one.
        out.code = "XX000".to_owned();
    }
    out
}

/// Turns an ErrorResponse body into `WalError::Server`, logging everything the server
/// said at debug level: callers decide whether it is a problem (an existing slot is not)
/// and log it with their context.
pub(crate) fn server_error(body: &[u8], context: &str) -> WalError {
    let f = parse_error_fields(body);
    tracing::debug!(
        context,
        severity = %f.severity,
        code = %f.code,
        message = %f.message,
        detail = f.detail.as_deref().unwrap_or(""),
        hint = f.hint.as_deref().unwrap_or(""),
        "replication server error"
    );
    WalError::Server {
        code: f.code,
        message: f.message,
    }
}

/// An Authentication request (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue {
        data: Bytes,
    },
    SaslFinal {
        data: Bytes,
    },
    /// Kerberos, GSSAPI, SSPI, ...: not supported.
    Other(i32),
}

pub(crate) fn parse_auth(body: &Bytes) -> Result<AuthRequest, WalError> {
    let mut r = Reader::new(body, "Authentication request");
    let code = r.i32()?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt = r.bytes(4)?;
            AuthRequest::Md5Password {
                salt: [salt[0], salt[1], salt[2], salt[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        // The SASL payload is everything after the 4-byte code.
        11 => AuthRequest::SaslContinue { data: body.slice(4..) },
        12 => AuthRequest::SaslFinal { data: body.slice(4..) },
        other => AuthRequest::Other(other),
    })
}

/// Parses a ParameterStatus body (`S`): name and value.
pub(crate) fn parse_parameter_status(body: &[u8]) -> Result<(String, String), WalError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.cstr()?, r.cstr()?))
}

/// Parses a DataRow body (`D`) into text cells (`None` = SQL NULL).
pub(crate) fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WalError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| WalError::Protocol(format!("DataRow: negative column count {n}")))?;
    // Each column needs at least its 4-byte length, so a count the body cannot hold is bogus;
    // checking first avoids pre-allocating for it.
    if n.saturating_mul(4) > r.remaining() {
        return Err(WalError::Protocol(format!(
            "DataRow: {n} columns do not fit in {} bytes",
            r.remaining()
        )));
    }
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| WalError::Protocol("DataRow: bad length".into()))?;
            row.push(Some(String::from_utf8_lossy(r.bytes(len)?).into_owned()));
        }
    }
    Ok(row)
}

/// A decoded CopyData payload of a logical replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CopyPayload {
    XLogData {
        start: Lsn,
        end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// Size of the XLogData header: 'w' + dataStart + walEnd + sendTime.
const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;
/// Size of a primary keepalive: 'k' + walEnd + sendTime + replyRequested.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// Decodes the payload of a CopyData (`d`) frame received while streaming.
pub(crate) fn parse_copy_data(payload: &Bytes) -> Result<CopyPayload, WalError> {
    let mut r = Reader::new(payload, "CopyData");
    let kind = r.u8()?;
    match kind {
        b'w' => {
            let start = Lsn(r.u64()?);
            let end = Lsn(r.u64()?);
            let send_time = r.i64()?;
            // Zero-copy: the pgoutput message shares the frame's allocation.
            Ok(CopyPayload::XLogData {
                start,
                end,
                send_time,
                data: payload.slice(XLOGDATA_HEADER..),
            })
        }
        b'k' => {
            let wal_end = Lsn(r.u64()?);
            let send_time = r.i64()?;
            let reply_requested = r.u8()? != 0;
            if payload.len() != KEEPALIVE_LEN {
                // Tolerated: a future server could append fields; what we need is present.
                tracing::debug!(len = payload.len(), "primary keepalive longer than 18 bytes");
            }
            Ok(CopyPayload::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(WalError::Protocol(format!(
            "unknown CopyData message {:?} ({} bytes) in replication stream",
            printable(other),
            payload.len()
        ))),
    }
}

/// Encodes the 34-byte standby status update ('r') CopyData payload.
///
/// All three positions are the same value: this client does nothing between receiving,
/// "flushing" (fanning out) and "applying" a change, and only the flush position matters for a
/// logical slot (it becomes `confirmed_flush_lsn`).
pub(crate) fn standby_status_update(position: Lsn, client_time: i64, reply_requested: bool) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&position.0.to_be_bytes());
    out[9..17].copy_from_slice(&position.0.to_be_bytes());
    out[17..25].copy_from_slice(&position.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn keepalive(end: u64, time: i64, reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.push(reply);
        v
    }

    #[test]
    fn parses_complete_frames_and_keeps_the_rest() {
        let mut wire = frame(b'd', &keepalive(0x10, 5, 1));
        wire.extend_from_slice(&frame(b'Z', b"I"));
        wire.extend_from_slice(&[b'd', 0, 0]); // start of a third frame
        let mut buf = BytesMut::from(&wire[..]);

        let f = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag, b'd');
        assert_eq!(
            parse_copy_data(&f.body).unwrap(),
            CopyPayload::Keepalive {
                wal_end: Lsn(0x10),
                send_time: 5,
                reply_requested: true
            }
        );
        let f = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        assert_eq!(parse_frame(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], &[b'd', 0, 0], "partial frame must stay buffered");
    }

    #[test]
    fn every_truncation_of_a_frame_waits_without_consuming() {
        let wire = frame(b'd', &xlogdata(1, 2, 3, b"BEGIN"));
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(parse_frame(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
        }
        let mut buf = BytesMut::from(&wire[..]);
        let f = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            parse_copy_data(&f.body).unwrap(),
            CopyPayload::XLogData {
                start: Lsn(1),
                end: Lsn(2),
                send_time: 3,
                data: Bytes::from_static(b"BEGIN")
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte_delivery_yields_the_same_frames() {
        let mut wire = Vec::new();
        for i in 0..20u64 {
            wire.extend_from_slice(&frame(b'd', &xlogdata(i, i + 1, 0, &vec![b'x'; i as usize * 7])));
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(f) = parse_frame(&mut buf).unwrap() {
                got.push(parse_copy_data(&f.body).unwrap());
            }
        }
        assert_eq!(got.len(), 20);
        for (i, m) in got.iter().enumerate() {
            match m {
                CopyPayload::XLogData { start, data, .. } => {
                    assert_eq!(start.0, i as u64);
                    assert_eq!(data.len(), i * 7);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_impossible_and_oversized_lengths() {
        for len in [0u32, 1, 3] {
            let mut buf = BytesMut::from(&[b'd', 0, 0, 0, len as u8][..]);
            assert!(matches!(parse_frame(&mut buf), Err(WalError::Protocol(_))), "len {len}");
        }
        // 0xFFFFFFFF and 1 GiB + 65: errors, and no allocation attempt.
        for len in [u32::MAX, (MAX_FRAME_LEN + 1) as u32] {
            let mut wire = vec![b'd'];
            wire.extend_from_slice(&len.to_be_bytes());
            let mut buf = BytesMut::from(&wire[..]);
            assert!(matches!(parse_frame(&mut buf), Err(WalError::Protocol(_))), "len {len}");
            assert_eq!(missing_bytes(&wire), 0);
        }
        // Exactly 4: an empty body is fine.
        let mut buf = BytesMut::from(&[b'c', 0, 0, 0, 4][..]);
        assert_eq!(parse_frame(&mut buf).unwrap().unwrap().body.len(), 0);
    }

    #[test]
    fn missing_bytes_reports_what_the_frame_still_needs() {
        let wire = frame(b'd', &[0u8; 100]);
        assert_eq!(missing_bytes(&wire[..3]), 0);
        assert_eq!(missing_bytes(&wire[..5]), 100);
        assert_eq!(missing_bytes(&wire[..50]), 55);
        assert_eq!(missing_bytes(&wire), 0);
    }

    #[test]
    fn truncated_copy_data_payloads_are_errors() {
        let x = xlogdata(1, 2, 3, b"");
        for cut in 0..x.len() {
            let p = Bytes::copy_from_slice(&x[..cut]);
            assert!(
                matches!(parse_copy_data(&p), Err(WalError::Protocol(_))),
                "xlogdata cut {cut}"
            );
        }
        let full = Bytes::copy_from_slice(&x);
        assert!(matches!(parse_copy_data(&full), Ok(CopyPayload::XLogData { ref data, .. }) if data.is_empty()));
        let k = keepalive(1, 2, 0);
        for cut in 0..k.len() {
            let p = Bytes::copy_from_slice(&k[..cut]);
            assert!(
                matches!(parse_copy_data(&p), Err(WalError::Protocol(_))),
                "keepalive cut {cut}"
            );
        }
    }

    #[test]
    fn unknown_copy_data_kinds_are_errors() {
        for kind in [b'h', b'r', b'x', 0u8, 0xff] {
            let p = Bytes::from(vec![kind; 40]);
            assert!(matches!(parse_copy_data(&p), Err(WalError::Protocol(_))), "kind {kind}");
        }
    }

    #[test]
    fn error_fields_are_parsed_leniently() {
        let body = b"SERROR\0VERROR\0C42704\0Mpublication \"nope\" does not exist\0Dsome detail\0\0";
        let f = parse_error_fields(body);
        assert_eq!(f.code, "42704");
        assert_eq!(f.message, "publication \"nope\" does not exist");
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.detail.as_deref(), Some("some detail"));
        // Truncated or empty bodies do not panic and keep what was there.
        for cut in 0..body.len() {
            let _ = parse_error_fields(&body[..cut]);
        }
        assert_eq!(parse_error_fields(b"").code, "XX000");
        assert!(matches!(server_error(body, "test"), WalError::Server { code, .. } if code == "42704"));
    }

    #[test]
    fn auth_requests() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        assert_eq!(parse_auth(&b(&[0, 0, 0, 0])).unwrap(), AuthRequest::Ok);
        assert_eq!(parse_auth(&b(&[0, 0, 0, 3])).unwrap(), AuthRequest::CleartextPassword);
        assert_eq!(
            parse_auth(&b(&[0, 0, 0, 5, 1, 2, 3, 4])).unwrap(),
            AuthRequest::Md5Password { salt: [1, 2, 3, 4] }
        );
        assert!(parse_auth(&b(&[0, 0, 0, 5, 1, 2])).is_err());
        assert_eq!(
            parse_auth(&b(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")).unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }
        );
        assert!(parse_auth(&b(b"\0\0\0\x0aSCRAM-SHA-256")).is_err());
        assert_eq!(
            parse_auth(&b(b"\0\0\0\x0br=abc")).unwrap(),
            AuthRequest::SaslContinue {
                data: Bytes::from_static(b"r=abc")
            }
        );
        assert_eq!(parse_auth(&b(&[0, 0, 0, 7])).unwrap(), AuthRequest::Other(7));
        assert!(parse_auth(&b(&[0, 0])).is_err());
    }

    #[test]
    fn data_rows() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            parse_data_row(&body).unwrap(),
            vec![Some("ab".into()), None, Some(String::new())]
        );
        for cut in 0..body.len() {
            assert!(parse_data_row(&body[..cut]).is_err(), "cut {cut}");
        }
        // Negative count, huge count, huge cell length.
        assert!(parse_data_row(&[0xff, 0xff]).is_err());
        assert!(parse_data_row(&[0x7f, 0xff, 0, 0, 0, 0]).is_err());
        assert!(parse_data_row(&[0, 1, 0x7f, 0xff, 0xff, 0xff, b'x']).is_err());
    }

    #[test]
    fn standby_status_layout() {
        let m = standby_status_update(Lsn(0x0102_0304_0506_0708), -2, true);
        assert_eq!(m.len(), 34);
        assert_eq!(m[0], b'r');
        for off in [1, 9, 17] {
            assert_eq!(&m[off..off + 8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        assert_eq!(&m[25..33], &(-2i64).to_be_bytes());
        assert_eq!(m[33], 1);
    }

    /// Pseudo-random garbage through every parser: errors are fine, panics are not.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make small plausible lengths common so bodies actually get parsed.
            if v.len() >= 5 && next() % 2 == 0 {
                let body_len = (v.len() - 1) as u32;
                v[1..5].copy_from_slice(&body_len.to_be_bytes());
            }
            if let Some(first) = v.first_mut() {
                *first = [b'd', b'R', b'E', b'D', b'S', b'W', *first][(next() % 7) as usize];
            }
            let mut buf = BytesMut::from(&v[..]);
            let _ = missing_bytes(&v);
            while let Ok(Some(f)) = parse_frame(&mut buf) {
                let _ = parse_copy_data(&f.body);
                let _ = parse_auth(&f.body);
                let _ = parse_data_row(&f.body);
                let _ = parse_parameter_status(&f.body);
                let _ = parse_error_fields(&f.body);
            }
            let body = Bytes::from(v);
            let _ = parse_copy_data(&body);
            let _ = parse_auth(&body);
            let _ = parse_data_row(&body);
        }
    }
}
