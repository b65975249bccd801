//! WebSocket transport: the upgrade ([`upgrade`]), the per-connection tasks
//! ([`connection`]), the bounded outbound queue ([`outbox`]) and the frame size guard
//! ([`guard`]). Knows sockets and frames, not topics.

pub mod connection;
pub mod guard;
pub mod outbox;
pub mod upgrade;
