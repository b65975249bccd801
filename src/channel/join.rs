//! The `phx_join` flow, with Supabase's checks in Supabase's order (protocol.md §4.2).

use std::sync::Arc;
use std::time::Duration;

use realtime_protocol::encode::{self, Status};
use realtime_protocol::errors;
use realtime_protocol::join::{join_reply_response, JoinRequest};
use tracing::{debug, info, warn};

use super::{Channel, Session};
use crate::authorization;
use crate::broadcast::replay;
use crate::clock::now_ms;
use crate::fanout::{Subscriber, TopicKey};
use crate::postgres_changes::registry::ChannelSubs;
use crate::publish::history::History;

pub(super) async fn join(s: &mut Session, topic: &str, join_ref: Option<&str>, ref_: Option<&str>, req: JoinRequest) {
    let Some(sub_topic) = topic.strip_prefix("realtime:") else {
        // Only `realtime:*` topics are routed, as in Supabase's socket.
        let reason = encode::reason(errors::UNMATCHED_TOPIC);
        return s.reply(None, ref_, topic, Status::Error, &reason);
    };

    // Before anything is kept for the channel. Refused at once, not after the join error
    // backoff: a delayed reply would hold the (echoed) long topic in memory meanwhile,
    // while an immediate one goes through the outbox, whose byte bound disconnects a
    // client that floods it. With MAX_CHANNELS_PER_CLIENT this bounds the topic bytes a
    // connection keeps.
    let max_topic = s.app.config.max_topic_bytes;
    if topic.len() > max_topic {
        info!(bytes = topic.len(), max = max_topic, "join refused: topic too long");
        crate::observability::metrics::join_refused();
        crate::observability::limit_rejected("topic_bytes");
        let reason = encode::reason(&errors::topic_too_long(max_topic));
        return s.reply(join_ref, ref_, topic, Status::Error, &reason);
    }

    // A second join of the same topic on one socket replaces the first (Phoenix closes
    // the old channel, with its own join_ref, before handling the new join).
    if let Some(old) = s.channels.remove(topic) {
        debug!(%topic, "duplicate join closes the previous channel");
        s.close_channel(old, true);
    }

    let refuse = |s: &Session, reason: &str| {
        info!(%topic, reason, "join refused");
        crate::observability::metrics::join_refused();
        let frame = encode::reply(s.vsn, join_ref, ref_, topic, Status::Error, &encode::reason(reason));
        s.send_later(frame, Duration::from_millis(s.app.config.channel_error_backoff_ms));
    };

    if sub_topic.is_empty() {
        return refuse(s, errors::TOPIC_NAME_REQUIRED);
    }
    if s.app.config.private_only && !req.config.private {
        return refuse(s, errors::PRIVATE_ONLY);
    }
    let limits = &s.app.limits;
    limits.joins.add(1);
    if limits.connections() > limits.max_concurrent_users {
        crate::observability::limit_rejected("concurrent_users");
        return refuse(s, errors::TOO_MANY_USERS_JOIN);
    }
    if limits.joins_exceeded() {
        // Supabase also closes the socket (1001), after the reply.
        crate::observability::limit_rejected("joins_per_second");
        refuse(s, errors::TOO_MANY_JOINS);
        return s.close_later(1001, "too many joins per second", s.app.config.channel_error_backoff_ms);
    }

    // The join's token, else the connection's. Opaque `sb_` keys are not JWTs: Supabase
    // ignores them here and falls back to the connection token.
    let token = match req.access_token {
        Some(t) if !t.starts_with("sb_") => t,
        _ => s.conn_token.clone(),
    };
    let claims = match s.app.verifier.verify(&token, now_ms() / 1000) {
        Ok(claims) => claims,
        Err(e) => return refuse(s, &e.join_reason()),
    };
    // Checked after the token (Supabase checks it before) because the token's tier
    // decides the limit.
    let client_limits = s.app.limits.for_claims(&claims);
    if s.channels.len() >= client_limits.max_channels_per_client {
        crate::observability::limit_rejected("max_channels_per_client");
        return refuse(s, errors::TOO_MANY_CHANNELS);
    }

    let config = req.config;
    // Public replay is refused as Supabase does, unless REPLAY_PUBLIC keeps a history.
    let public_replay = config.replay.is_some() && !config.private;
    if public_replay && s.app.publish.history().is_none() {
        return refuse(s, errors::REPLAY_PUBLIC);
    }
    let read = if config.private {
        // Read authorization is an RLS check on `realtime.messages`; without a database
        // nothing can grant it, so private channels are refused rather than left open.
        let Some(pg) = s.app.pg.clone() else {
            return refuse(s, &errors::unauthorized_read(sub_topic));
        };
        match authorization::read(pg.pool(), sub_topic, &claims, config.presence_enabled).await {
            Ok(read) if read.broadcast || read.presence => read,
            Ok(_) => return refuse(s, &errors::unauthorized_read(sub_topic)),
            Err(e) if e.as_db_error().is_some() => {
                warn!(error_code = "RlsPolicyError", %topic, error = %e, "read policy failed");
                return refuse(s, &errors::unauthorized_read(sub_topic));
            }
            Err(e) => {
                warn!(%topic, error = %e, "cannot authorize a private channel");
                return refuse(s, errors::PG_UNABLE_TO_CONNECT);
            }
        }
    } else {
        authorization::Read {
            broadcast: true,
            presence: true,
        }
    };

    // Replay: read before answering, since failures are join errors; delivered right
    // after the reply, before live messages can reach the channel.
    let mut replay_since = 0;
    let mut replay_limit = 0;
    let stored = match &config.replay {
        Some(params) => {
            let Some((since, limit)) = replay::params(params) else {
                return refuse(s, errors::REPLAY_INVALID);
            };
            if !read.broadcast {
                return refuse(s, &errors::unauthorized_read(sub_topic));
            }
            (replay_since, replay_limit) = (since, limit);
            match load_stored(s, sub_topic, topic, config.private, since, limit).await {
                Ok(messages) => Some(messages),
                Err(e) => {
                    warn!(%topic, error = %e, "cannot read messages to replay");
                    return refuse(s, errors::REPLAY_FAILED);
                }
            }
        }
        None => None,
    };

    let key = TopicKey::new(topic, config.private);
    let channel = Channel {
        id: s.app.new_channel_id(),
        key: key.clone(),
        join_ref: join_ref.map(str::to_owned),
        broadcast: crate::broadcast::Settings {
            echo: config.broadcast_self,
            ack: config.broadcast_ack,
        },
        presence: crate::presence::handler::Member {
            key: config.presence_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            calls: Default::default(),
        },
        token,
        claims,
        read,
        write: None,
        pg_bindings: Arc::new(config.postgres_changes),
        limits: client_limits,
        replication_ready_by: config.replication_ready.then(|| {
            now_ms().saturating_add(i64::try_from(s.app.config.replication_ready_timeout_ms).unwrap_or(i64::MAX))
        }),
    };

    // `postgres_changes_options.wait`: the reply says the bindings are live, so they are
    // resolved (and the stream up) before it; a refusal or timeout is the join's error.
    let waited = match config.postgres_changes_wait_ms {
        Some(wait_ms) if !channel.pg_bindings.is_empty() => {
            let Some(pg) = s.app.pg.clone() else {
                return refuse(s, errors::PG_UNABLE_TO_CONNECT);
            };
            if let Err(reason) = pg
                .subscribe_waiting(channel_subs(s, &channel), Duration::from_millis(wait_ms))
                .await
            {
                return refuse(s, &reason);
            }
            true
        }
        _ => false,
    };

    s.app.publish.ready(&key).await;
    // In a cluster the history is kept outside this node (the engine): now that this node
    // follows the topic (what is published from here on reaches it), read it there.
    let stored = match stored {
        Some(db) if public_replay => {
            let others = s.app.publish.shared_history(&key, replay_since).await;
            Some(replay::merge([db, others], replay_limit))
        }
        other => other,
    };
    let state_join_ref = (config.presence_enabled && read.presence).then_some(join_ref.unwrap_or_default());
    // Reply, replayed messages, then subscription: with a public history this runs under
    // the topic's publish lock, so each message is either replayed or delivered live.
    let finish = |recent: Vec<replay::Stored>| {
        let replayed = stored.map(|db| replay::merge([db, recent], replay_limit));
        let response = join_reply_response(&channel.pg_bindings);
        s.reply(join_ref, ref_, topic, Status::Ok, &response);
        for m in replayed.iter().flatten() {
            if let Some(frame) = replay::frame(m, s.vsn, join_ref, topic) {
                s.send(frame);
            }
        }
        if let Some(messages) = &replayed {
            debug!(%topic, count = messages.len(), "replayed stored messages");
        }
        let sub = Subscriber {
            channel: channel.id,
            vsn: s.vsn,
            outbox: s.outbox.clone(),
            broadcast_read: read.broadcast,
            presence_read: read.presence,
            replayed: replayed.as_deref().map(|m| Arc::new(replay::ids(m))),
        };
        s.app.presence.join(&s.app.publish, &key, sub, state_join_ref);
    };
    match (s.app.publish.history(), public_replay) {
        (Some(history), true) => history.with_recent(topic, replay_since, finish),
        _ => finish(Vec::new()),
    }

    if waited {
        s.system(&channel, "postgres_changes", true, errors::PG_SUBSCRIBED);
    } else {
        subscribe_postgres_changes(s, &channel);
    }
    debug!(%topic, channel = channel.id, "joined");
    crate::observability::metrics::channel_opened(key.private, channel.pg_bindings.len());
    s.channels.insert(topic.to_owned(), Box::new(channel));
}

/// Stored messages to replay from the database, oldest first: `realtime.messages` rows of
/// the channel's privacy, and for public channels the history's rows. Empty without a
/// database (a public history then replays from memory only).
async fn load_stored(
    s: &Session,
    sub_topic: &str,
    topic: &str,
    private: bool,
    since: i64,
    limit: i64,
) -> Result<Vec<replay::Stored>, tokio_postgres::Error> {
    let Some(pg) = &s.app.pg else {
        return Ok(Vec::new());
    };
    let messages = replay::load(pg.pool(), sub_topic, private, since, limit).await?;
    if private {
        return Ok(messages);
    }
    let history = History::load(pg.pool(), topic, since, limit).await?;
    Ok(replay::merge([messages, history], limit))
}

/// Starts the channel's Postgres Changes subscriptions; the outcome arrives as a `system`
/// push. Without a database the channel gets the error Supabase sends when it cannot
/// reach the project database.
pub(super) fn subscribe_postgres_changes(s: &Session, ch: &Channel) {
    if ch.pg_bindings.is_empty() {
        return;
    }
    match &s.app.pg {
        Some(pg) => pg.subscribe(channel_subs(s, ch)),
        None => {
            info!(topic = %ch.key.topic, "postgres_changes requested but no DATABASE_URL is configured");
            s.system(ch, "postgres_changes", false, errors::PG_UNABLE_TO_CONNECT);
        }
    }
}

/// The Postgres Changes registration of a channel (its bindings, not yet resolved).
fn channel_subs(s: &Session, ch: &Channel) -> ChannelSubs {
    ChannelSubs {
        channel: ch.id,
        topic: ch.key.topic.clone(),
        join_ref: ch.join_ref.clone(),
        vsn: s.vsn,
        outbox: s.outbox.clone(),
        role: ch.claims.role.clone(),
        claims: ch.claims.json.clone(),
        sub: ch.claims.sub.clone(),
        bindings: ch.pg_bindings.clone(),
        subs: Vec::new(),
    }
}
