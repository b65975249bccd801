//! `access_token` pushes: token refresh for one channel (protocol.md §8.2).

use realtime_protocol::errors;
use tracing::warn;

use crate::authorization;
use crate::fanout::Subscriber;

use super::Session;
use crate::clock::now_ms;

/// Verifies a refreshed token. No reply on success; on failure the channel is shut down
/// with a `system` error naming the reason, then `phx_close`.
pub(super) async fn refresh(s: &mut Session, topic: &str, token: Option<String>) {
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
    let claims = match s.app.verifier.verify(&token, now_ms() / 1000) {
        Ok(claims) => claims,
        Err(e) => {
            warn!(%topic, error = ?e, "refreshed access token refused");
            return s.shutdown_channel(topic, &e.system_message());
        }
    };
    if ch.key.private {
        if let Err(message) = reauthorize(s, topic, &claims).await {
            return s.shutdown_channel(topic, &message);
        }
    }
    if let Some(ch) = s.channels.get_mut(topic) {
        ch.token = token;
        ch.claims = claims;
        // Write permissions are asked again with the new claims when next needed.
        ch.write = None;
    }
    // New claims: Supabase re-subscribes (and says so again).
    if let Some(ch) = s.channels.get(topic) {
        super::join::subscribe_postgres_changes(s, ch);
    }
}

/// Re-evaluates read permissions of a private channel with new claims; on success the
/// channel's fan-out flags follow. The error is the `system` text to close it with.
async fn reauthorize(s: &mut Session, topic: &str, claims: &crate::auth::Claims) -> Result<(), String> {
    let Some(ch) = s.channels.get(topic) else { return Ok(()) };
    let sub_topic = ch.key.sub_topic().to_owned();
    let before = ch.read;
    let Some(pg) = s.app.pg.clone() else {
        return Err(errors::no_read_permission(&sub_topic));
    };
    let read = authorization::read(pg.pool(), &sub_topic, claims, before.presence)
        .await
        .map_err(|e| {
            warn!(%topic, error = %e, "read authorization failed on token refresh");
            errors::no_read_permission(&sub_topic)
        })?;
    if !read.broadcast && !read.presence {
        return Err(errors::no_read_permission(&sub_topic));
    }
    if (before.broadcast && !read.broadcast) || (before.presence && !read.presence) {
        return Err(errors::read_permission_revoked(&sub_topic));
    }
    if read != before {
        if let Some(ch) = s.channels.get_mut(topic) {
            ch.read = read;
            s.app.publish.resubscribe(
                &ch.key,
                Subscriber {
                    channel: ch.id,
                    vsn: s.vsn,
                    outbox: s.outbox.clone(),
                    broadcast_read: read.broadcast,
                    presence_read: read.presence,
                    replayed: None,
                },
            );
        }
    }
    Ok(())
}
