//! Every text a client can see, copied exactly from Supabase Realtime, in one place.
//! Tests compare against these same constants.

/// Join refused: `realtime:` with nothing after it.
pub const TOPIC_NAME_REQUIRED: &str = "TopicNameRequired: You must provide a topic name";
/// Join refused: the socket already has the maximum number of channels.
pub const TOO_MANY_CHANNELS: &str = "ChannelRateLimitReached: Too many channels";
/// Join refused: the server holds as many connections as it allows.
pub const TOO_MANY_USERS_JOIN: &str = "ConnectionRateLimitReached: Too many connected users";
/// Join refused (and the socket closed with 1001): joins per second over the limit.
pub const TOO_MANY_JOINS: &str = "ClientJoinRateLimitReached: Too many joins per second";
/// `system` error closing a channel that sends while events per second are over the limit.
pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";
/// `system` error closing a channel that pushes presence while presence events per
/// second are over the limit.
pub const TOO_MANY_PRESENCE_MESSAGES: &str = "Too many presence messages per second";
/// `system` error closing a channel over its presence calls per window.
pub const CLIENT_PRESENCE_RATE: &str = "Client presence rate limit exceeded";
/// `system` error closing a channel whose presence payload is over the size limit.
pub const TRACK_SIZE_EXCEEDED: &str = "Track message size exceeded";
/// Join refused: `PRIVATE_ONLY` is set and the join is public.
pub const PRIVATE_ONLY: &str = "PrivateOnly: This project only allows private channels";
/// Join refused: replay asked on a public channel.
pub const REPLAY_PUBLIC: &str = "UnableToReplayMessages: Replay is not allowed for public channels";
/// Join refused: replay parameters are not integers.
pub const REPLAY_INVALID: &str = "UnableToReplayMessages: Replay params are not valid";
/// Join refused: the stored messages could not be read.
pub const REPLAY_FAILED: &str = "UnableToReplayMessages: Realtime was unable to replay messages";
/// Join refused: the topic is longer than `MAX_TOPIC_BYTES`. Supabase has no such limit
/// (its topics are short identifiers in practice); the text follows its `Code: message` style.
pub fn topic_too_long(max_bytes: usize) -> String {
    format!("TopicNameTooLong: The topic name is longer than {max_bytes} bytes")
}
/// Reply to a push on a topic the socket has not joined.
pub const UNMATCHED_TOPIC: &str = "unmatched topic";
/// Reply to a presence track whose payload is not a JSON object.
pub const PRESENCE_NOT_A_MAP: &str = "Presence track payload must be a map";
/// Ack reply when a broadcast payload is over the size limit (the docs' object form,
/// which both clients accept).
pub const PAYLOAD_SIZE_EXCEEDED: &str = "payload_size_exceeded";
/// `system` message when the channel's token has expired.
pub fn token_expired(seconds_ago: i64) -> String {
    format!("Token has expired {seconds_ago} seconds ago")
}
/// `system` message (extension `postgres_changes`) sent while Postgres Changes cannot
/// subscribe, e.g. when the server runs without a database.
pub const PG_UNABLE_TO_CONNECT: &str = "Realtime was unable to connect to the project database";
/// `system` ok message after Postgres Changes subscribed.
pub const PG_SUBSCRIBED: &str = "Subscribed to PostgreSQL";
/// Join error when `postgres_changes_options.wait` was asked and the bindings did not
/// become live within the wait (Supabase's text).
pub fn pg_wait_timeout(wait_ms: u64) -> String {
    format!(
        "PostgresChangesSubscribeTimeout: Timed out after {wait_ms}ms waiting for the postgres_changes subscription"
    )
}
/// `system` ok message (extension `system`) once the Broadcast from Database stream runs,
/// for channels that joined with `broadcast.replication_ready`.
pub const REPLICATION_READY: &str = "Replication connection established";
/// `system` error closing such a channel when the stream did not start in time.
pub const REPLICATION_NOT_READY: &str = "Replication connection was not established in time";
/// `system` ok notice pushed on every topic before an operator-initiated disconnect.
pub const SERVER_REQUESTED_DISCONNECT: &str = "Server requested disconnect";

/// HTTP bodies of refused WebSocket upgrades (`{"error": ...}`).
pub mod upgrade {
    /// No `x-api-key` header and no `apikey` query parameter.
    pub const API_KEY_MISSING: &str = "API key is missing";
    /// Too many sockets connected (429).
    pub const TOO_MANY_USERS: &str = "Too many connected users";
    /// Joins per second over the limit (429).
    pub const TOO_MANY_JOINS: &str = "Too many joins per second";
}

/// REST API bodies.
pub mod rest {
    /// 401 `{"message": ...}` and 403 for a refused private send.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// 415 `{"error": ...}`.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "Unsupported Media Type. Use application/json or application/octet-stream";
    /// 422 per-field error for a missing or empty field.
    pub const CANT_BE_BLANK: &str = "can't be blank";
    /// 429 `{"message": ...}` while events per second are over the limit.
    pub const RATE_LIMITED: &str = "You have exceeded your rate limit";
    /// 422 per-field error for an oversized payload.
    pub const PAYLOAD_TOO_LARGE: &str = "Payload size exceeds tenant limit";
}

/// Join refused for a private channel the token may not read.
pub fn unauthorized_read(sub_topic: &str) -> String {
    format!("Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}")
}

/// `system` message when a refreshed token may no longer read a private channel.
pub fn no_read_permission(sub_topic: &str) -> String {
    format!("You do not have permissions to read from this Channel topic: {sub_topic}")
}

/// `system` message when a refreshed token lost one of the read permissions it had.
pub fn read_permission_revoked(sub_topic: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {sub_topic}")
}

/// `persist` (realtime-rs texts: Supabase's storage branch is unreleased). Sent as
/// `{"error": …}` in an acked broadcast's error reply, and as a REST `{"message": …}`.
pub mod persist {
    /// `persist` on a public channel.
    pub const PUBLIC_CHANNEL: &str = "UnableToStoreMessage: Only broadcasts on private channels can be stored";
    /// `persist` on a server without `DATABASE_URL`.
    pub const NO_DATABASE: &str = "UnableToStoreMessage: This server has no database to store messages in";
    /// The insert into `realtime.messages` failed.
    pub const STORE_FAILED: &str = "UnableToStoreMessage: Realtime was unable to store the message";
    /// A broadcast map without a string `event` (nothing to store under).
    pub const NO_EVENT: &str = "UnableToStoreMessage: A stored broadcast needs a string event";
}
