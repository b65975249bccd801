//! The `x-realtime-signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<raw body>" keyed with WEBHOOK_SECRET>`, Stripe's scheme: the time inside the
//! signed text lets a receiver refuse replays older than its tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header name.
pub const HEADER: &str = "x-realtime-signature";

/// The header value for `body` sent at `unix_secs`.
pub fn signature(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    format!("t={unix_secs},v1={}", hex(&mac(secret, unix_secs, body)))
}

fn mac(secret: &[u8], unix_secs: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so this cannot fail; an empty tag would be refused
    // by every receiver rather than panic here.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    m.update(unix_secs.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2_and_the_header_shape() {
        // HMAC-SHA256("Jefe", "what do ya want for nothing?"), split as "<t>.<body>" would be.
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap_or_else(|e| panic!("{e}"));
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let h = signature(b"s", 1_700_000_000, b"{}");
        assert!(h.starts_with("t=1700000000,v1=") && h.len() == 16 + 64, "{h}");
        assert_ne!(h, signature(b"s", 1_700_000_001, b"{}"), "the time is signed");
    }
}
