//! Send-time stamps embedded in every payload, and finding them in any received frame.

/// The payload every publisher sends: step number, send time, optional padding.
pub fn stamp(step: u32, t_ns: u64, pad: usize) -> String {
    if pad == 0 {
        format!("{{\"_s\":{step},\"_t\":{t_ns}}}")
    } else {
        format!("{{\"_s\":{step},\"_t\":{t_ns},\"p\":\"{}\"}}", "x".repeat(pad))
    }
}

/// Finds `"_s":N` … `"_t":N` anywhere in a frame (binary header, V1/V2 JSON, Pusher data
/// whether an object or a string with escaped quotes).
pub fn read_stamp(b: &[u8]) -> Option<(u32, u64)> {
    let i = find(b, b"_s")?;
    let (s, rest) = number_after(&b[i + 2..])?;
    let j = find(rest, b"_t")?;
    let (t, _) = number_after(&rest[j + 2..])?;
    Some((u32::try_from(s).ok()?, t))
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Skips `"`, `\` and `:` then reads decimal digits.
fn number_after(b: &[u8]) -> Option<(u64, &[u8])> {
    let start = b.iter().position(|c| !matches!(c, b'"' | b'\\' | b':' | b' '))?;
    let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n = std::str::from_utf8(&b[start..start + digits]).ok()?.parse().ok()?;
    Some((n, &b[start + digits..]))
}
