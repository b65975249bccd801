//! Wire types and serializers for the Phoenix-channel protocol that Supabase Realtime
//! clients speak. No I/O, no tokio, no clock: decoding takes bytes and returns values,
//! encoding returns bytes the caller sends.
//!
//! How a frame flows through this crate:
//!
//! * [`frame`] turns one WebSocket message (text or binary) into an [`frame::Inbound`]
//!   envelope, for either wire version ([`Vsn`]): V1 JSON objects, V2 JSON arrays, or the
//!   V2 binary "user broadcast push" (type 3).
//! * [`event`] turns the envelope's `event` + `payload` into a typed [`event::ClientEvent`]
//!   (heartbeat, join, leave, access_token, broadcast, presence).
//! * [`join`] parses the `phx_join` config with Supabase's defaults.
//! * [`encode`] writes server frames (replies, pushes) for a wire version, and
//!   [`broadcast`] the broadcast message in each encoding a receiver can take (V1 JSON,
//!   V2 JSON, V2 binary type 4), so the server encodes each message at most once per
//!   version and shares the bytes.
//! * [`errors`] holds every client-visible error text in one table.

pub mod broadcast;
pub mod encode;
pub mod errors;
pub mod event;
pub mod filter;
pub mod frame;
pub mod join;
mod json;
pub mod persist;

pub use broadcast::{BroadcastMessage, Encoding};
pub use encode::WireFrame;
pub use frame::{Inbound, Payload, ProtocolError};

/// The serializer a socket negotiated with the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, text frames only (the Python client, and the default).
    V1,
    /// `2.0.0`: JSON arrays, plus binary user-broadcast frames (supabase-js' default).
    V2,
}

impl Vsn {
    /// Parses the `vsn` query value the way Phoenix matches `~> 1.0.0` / `~> 2.0.0`:
    /// absent means 1.0.0; any other major version, or garbage, is refused (HTTP 403).
    pub fn from_query(value: Option<&str>) -> Option<Vsn> {
        let Some(value) = value else {
            return Some(Vsn::V1);
        };
        let mut parts = value.split('.');
        let major = parts.next()?;
        let minor = parts.next()?;
        let patch = parts.next().unwrap_or("0");
        if parts.next().is_some()
            || ![minor, patch]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        match major {
            "1" => Some(Vsn::V1),
            "2" => Some(Vsn::V2),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_parsing_matches_phoenix_requirements() {
        assert_eq!(Vsn::from_query(None), Some(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("2.1.3")), Some(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("3.0.0")), None);
        assert_eq!(Vsn::from_query(Some("")), None);
        assert_eq!(Vsn::from_query(Some("two")), None);
        assert_eq!(Vsn::from_query(Some("2.x.0")), None);
    }
}
