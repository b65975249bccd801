//! `access_token` pushes: token refresh for one channel (protocol.md §8.2).

use tracing::warn;

use super::Session;
use crate::app::now_ms;

/// Verifies a refreshed token. No reply on success; on failure the channel is shut down
/// with a `system` error naming the reason, then `phx_close`.
pub(super) fn refresh(s: &mut Session, topic: &str, token: Option<String>) {
    // null, an opaque `sb_` key, or the same token: nothing to do.
    let Some(token) = token.filter(|t| !t.starts_with("sb_")) else {
        return;
    };
    let Some(ch) = s.channels.get_mut(topic) else {
        return;
    };
    if ch.token == token {
        return;
    }
    match s.app.verifier.verify(&token, now_ms() / 1000) {
        Ok(claims) => {
            ch.token = token;
            ch.claims = claims;
            // New claims: Supabase re-subscribes (and says so again).
            if let Some(ch) = s.channels.get(topic) {
                super::join::subscribe_postgres_changes(s, ch);
            }
        }
        Err(e) => {
            warn!(%topic, error = ?e, "refreshed access token refused");
            s.shutdown_channel(topic, &e.system_message());
        }
    }
}
