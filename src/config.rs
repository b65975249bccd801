//! Runtime configuration: every setting is an environment variable and a `--flag`.
//! The README lists them all; each field's doc comment states its default.

use std::net::IpAddr;

use clap::Args;

/// The server's settings (the binary's arguments are [`crate::cli::Cli`]).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free port; the chosen address is printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,

    /// Threads serving connections (the runtime's workers). Unset: one per CPU core.
    /// Lower it when several nodes share one machine, so they do not outnumber its cores.
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// HS256/384/512 secret for client JWTs. Unset (and no JWKS) = development mode: a
    /// random secret is generated and ready-made anon/service_role tokens are printed.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A JWKS JSON document, or a path to a file holding one (RS*/ES*/EdDSA keys by
    /// `kid`, and `oct` keys for HS* by `kid`).
    #[arg(long, env = "JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,

    /// Postgres connection string; enables Postgres Changes (not needed for Broadcast
    /// and Presence).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Publication whose tables Postgres Changes streams (the user creates it, e.g.
    /// `create publication supabase_realtime for table …`).
    #[arg(long, env = "PUBLICATION", default_value = "supabase_realtime")]
    pub publication: String,

    /// Logical replication slot (persistent; created if missing). Changes committed while
    /// the server is down are delivered when it is back, so bound the WAL it may hold with
    /// Postgres' `max_slot_wal_keep_size`.
    #[arg(long, env = "SLOT_NAME", default_value = "realtime_rs")]
    pub slot_name: String,

    /// Apply the `realtime` schema migrations (realtime.messages, realtime.send, …) at start.
    /// Set to false when you manage that schema yourself.
    #[arg(long, env = "REALTIME_MIGRATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub realtime_migrations: bool,

    /// Logical replication slot for Broadcast from Database (persistent; created if
    /// missing), streaming the `supabase_realtime_messages_publication` publication.
    #[arg(long, env = "MESSAGES_SLOT_NAME", default_value = "realtime_rs_messages")]
    pub messages_slot_name: String,

    /// Rows of `realtime.messages` older than this many hours are deleted (0 = keep all).
    #[arg(long, env = "MESSAGES_RETENTION_HOURS", default_value_t = 72)]
    pub messages_retention_hours: u64,

    /// How often retention runs, in seconds (tests shorten it).
    #[arg(long, env = "MESSAGES_RETENTION_INTERVAL_SECS", default_value_t = 3600, hide = true)]
    pub messages_retention_interval_secs: u64,

    /// After a start, wait this long before streaming the replication slots, so clients
    /// that were connected before a restart have rejoined when the changes committed in
    /// the meantime are delivered.
    #[arg(long, env = "REPLICATION_START_DELAY_MS", default_value_t = 3000)]
    pub replication_start_delay_ms: u64,

    /// SQL connections for catalog reads and RLS checks.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: usize,

    /// Also keep public broadcasts (from clients and REST) and replay them to joins with
    /// `config.broadcast.replay` (Supabase replays private channels only). Kept in memory
    /// (newest 25 per topic) and, with DATABASE_URL, in `realtime.rs_public_broadcasts`
    /// for MESSAGES_RETENTION_HOURS. Live public broadcasts then carry `meta.id`.
    #[arg(long, env = "REPLAY_PUBLIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub replay_public: bool,

    /// Postgres Changes: check Row Level Security in batches (one statement per viewer
    /// and table covering every row of a round). `false` checks each (subscriber, row)
    /// pair with its own statement, the way Supabase's `apply_rls` does; it exists to
    /// measure what batching buys. The answers are the same either way.
    #[arg(long, env = "POSTGRES_CHANGES_RLS_BATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub postgres_changes_rls_batch: bool,

    /// Refuse public channels (`PrivateOnly: This project only allows private channels`).
    #[arg(long, env = "PRIVATE_ONLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub private_only: bool,

    /// Delay before answering a refused WebSocket upgrade (Supabase: 2000), to slow
    /// reconnect loops of misconfigured clients.
    #[arg(long, env = "CONNECT_ERROR_BACKOFF_MS", default_value_t = 2000)]
    pub connect_error_backoff_ms: u64,

    /// Delay before a join error reply (Supabase: 5000); clients retry joins on a timer,
    /// this slows their loop. The connection keeps being served meanwhile.
    #[arg(long, env = "CHANNEL_ERROR_BACKOFF_MS", default_value_t = 5000)]
    pub channel_error_backoff_ms: u64,

    /// A channel joined with `broadcast.replication_ready` gets `Replication connection
    /// established` once the Broadcast from Database stream runs; if it does not run
    /// within this long, the channel is closed with `Replication connection was not
    /// established in time` (Supabase: one minute).
    #[arg(long, env = "REPLICATION_READY_TIMEOUT_MS", default_value_t = 60_000)]
    pub replication_ready_timeout_ms: u64,

    /// A connection silent for this long gets a WebSocket ping; after twice this long
    /// with nothing received (not even a pong) it is dropped as dead and its presence leaves.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 15_000)]
    pub ping_interval_ms: u64,

    /// A connection that sent no message (text/binary frame) for this long is closed
    /// (Phoenix's websocket timeout).
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// An HTTP connection must send a complete request head within this long, counted
    /// from the connection (or the previous response); otherwise it is closed. Covers
    /// sockets that send nothing or half a header.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Connections accepted but not upgraded to a WebSocket (yet); beyond, the oldest is
    /// closed to make room. Also kept under half the open-file limit (less 64).
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value_t = 1024)]
    pub max_pending_connections: usize,

    /// Longest topic a join may name, in bytes, `realtime:` included (V2's binary frames
    /// cannot carry more than 255); beyond, `TopicNameTooLong: …`.
    #[arg(long, env = "MAX_TOPIC_BYTES", default_value_t = 255)]
    pub max_topic_bytes: usize,

    /// Largest WebSocket message accepted, in bytes (Supabase: 5,000,000).
    #[arg(long, env = "MAX_FRAME_SIZE", default_value_t = 5_000_000)]
    pub max_frame_size: usize,

    /// Channels one connection may join (Supabase default: 100).
    #[arg(long, env = "MAX_CHANNELS_PER_CLIENT", default_value_t = 1000)]
    pub max_channels_per_client: usize,

    /// Open WebSocket connections the server accepts; beyond, upgrades get 429
    /// `Too many connected users` (Supabase self-host default: 200).
    #[arg(long, env = "MAX_CONCURRENT_USERS", default_value_t = 100_000)]
    pub max_concurrent_users: usize,

    /// Channel joins per second, server-wide, averaged over the rate window; beyond,
    /// `ClientJoinRateLimitReached: Too many joins per second` (Supabase default: 100).
    #[arg(long, env = "MAX_JOINS_PER_SECOND", default_value_t = 10_000)]
    pub max_joins_per_second: u64,

    /// Broadcast events per second, server-wide, averaged, counted as Supabase counts
    /// them (each broadcast plus one per channel it reaches); beyond, the sending channel
    /// is closed with `Too many messages per second` and REST gets 429 (Supabase: 100).
    #[arg(long, env = "MAX_EVENTS_PER_SECOND", default_value_t = 10_000_000)]
    pub max_events_per_second: u64,

    /// Presence pushes per second, server-wide, averaged; beyond, the channel is closed
    /// with `Too many presence messages per second` (Supabase schema default: 1000).
    #[arg(long, env = "MAX_PRESENCE_EVENTS_PER_SECOND", default_value_t = 100_000)]
    pub max_presence_events_per_second: u64,

    /// Presence pushes (track/untrack) one channel may make per CLIENT_PRESENCE_WINDOW_MS;
    /// beyond, `Client presence rate limit exceeded` (Supabase: 5 per 30 s).
    #[arg(long, env = "CLIENT_PRESENCE_MAX_CALLS", default_value_t = 50)]
    pub client_presence_max_calls: usize,

    /// The window of CLIENT_PRESENCE_MAX_CALLS, in ms.
    #[arg(long, env = "CLIENT_PRESENCE_WINDOW_MS", default_value_t = 30_000)]
    pub client_presence_window_ms: u64,

    /// How long the presence API's `last_seen` remembers a key after it left, in seconds
    /// (0: not at all).
    #[arg(long, env = "PRESENCE_LAST_SEEN_SECONDS", default_value_t = 3600)]
    pub presence_last_seen_seconds: u64,

    /// Server-set presence entries (`POST /api/channels/:topic/presence`) one topic may
    /// hold on this node; beyond, the POST gets 422.
    #[arg(long, env = "PRESENCE_SERVER_MAX_PER_TOPIC", default_value_t = 100)]
    pub presence_server_max_per_topic: usize,

    /// Rate counters close a bucket every this many ms (Supabase: 5000) ...
    #[arg(long, env = "RATE_TICK_MS", default_value_t = 5000)]
    pub rate_tick_ms: u64,

    /// ... and average over this many buckets (Supabase: 12, i.e. one minute), so short
    /// bursts above a limit are tolerated.
    #[arg(long, env = "RATE_WINDOW_BUCKETS", default_value_t = 12)]
    pub rate_window_buckets: usize,

    /// Postgres Changes rows larger than this (bytes) are sent with only their values of at
    /// most 64 bytes and `Error 413: Payload Too Large` (Supabase: 1 MiB).
    #[arg(long, env = "MAX_RECORD_BYTES", default_value_t = 1024 * 1024)]
    pub max_record_bytes: usize,

    /// Values an `in` filter may list (Supabase: 100).
    #[arg(long, env = "MAX_IN_FILTER_VALUES", default_value_t = 100)]
    pub max_in_filter_values: usize,

    /// A TOML file of limit profiles (`[tiers.<name>]` with max_channels_per_client,
    /// max_payload_size_kb, client_presence_max_calls, client_presence_window_ms), chosen
    /// per token by the TIER_CLAIM claim; unset settings and unknown tiers use the globals.
    #[arg(long, env = "LIMITS_FILE")]
    pub limits_file: Option<std::path::PathBuf>,

    /// The JWT claim naming a token's tier in LIMITS_FILE.
    #[arg(long, env = "TIER_CLAIM", default_value = "tier")]
    pub tier_claim: String,

    /// Largest broadcast payload, in KB (Supabase default: 3000).
    #[arg(long, env = "MAX_PAYLOAD_SIZE_KB", default_value_t = 3000)]
    pub max_payload_size_kb: usize,

    /// Outbound queue bound per connection, in messages; a client that falls this far
    /// behind is disconnected (a slow consumer never stalls a topic).
    #[arg(long, env = "OUTBOUND_QUEUE_MESSAGES", default_value_t = 8192)]
    pub outbound_queue_messages: usize,

    /// Outbound queue bound per connection, in bytes.
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Operations: `METRICS_TOKEN`, `LOG_FORMAT`.
    #[command(flatten)]
    pub observability: crate::observability::ObsConfig,

    /// Cluster engine linking several nodes into one server: `redis://host:port[/db]`,
    /// `rediss://…` (Redis 7 or Valkey) or `nats://host:port`. Unset: a single node, no
    /// engine needed.
    #[arg(long, env = "CLUSTER_URL")]
    pub cluster_url: Option<String>,

    /// This node's name in logs and `/api/health` (default: random per start).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Prefix of every channel and key on the engine, so clusters can share one.
    #[arg(long, env = "CLUSTER_NAMESPACE", default_value = "realtime")]
    pub cluster_namespace: String,

    /// How long a node keeps a topic's engine subscription after its last local member
    /// left, in milliseconds.
    #[arg(long, env = "CLUSTER_UNSUBSCRIBE_DELAY_MS", default_value_t = 5000)]
    pub cluster_unsubscribe_delay_ms: u64,

    /// Webhook receivers, comma-separated `http://host[:port]/path` URLs (unset: no
    /// webhooks). See README "Webhooks".
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// HMAC-SHA256 key of the `x-realtime-signature` header (required with WEBHOOK_URL).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Topics that raise webhook events, comma-separated; `team:*` is a prefix (default:
    /// every topic).
    #[arg(long, env = "WEBHOOK_TOPICS")]
    pub webhook_topics: Option<String>,

    /// Retries of a batch after its first attempt (non-2xx, connection error, 5 s
    /// timeout), with exponential backoff from 200 ms and jitter; then it is dropped.
    #[arg(long, env = "WEBHOOK_MAX_RETRIES", default_value_t = 8)]
    pub webhook_max_retries: u32,

    /// Batches queued per receiver; beyond, the oldest is dropped and counted.
    #[arg(long, env = "WEBHOOK_QUEUE", default_value_t = 1000)]
    pub webhook_queue: usize,

    /// How long a batch collects events after its first, in ms.
    #[arg(long, env = "WEBHOOK_BATCH_MS", default_value_t = 250)]
    pub webhook_batch_ms: u64,

    /// How long shutdown waits for connections to drain.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,

    /// Not a setting: in development mode (no JWT configuration, or `realtime dev`'s
    /// public secret) the server fills this with the keys it printed, and the inspector
    /// offers them to a browser on the same machine (`GET /inspector/dev-keys`).
    #[arg(skip)]
    pub dev_keys: Option<DevKeys>,
}

/// The anon and service_role keys of development mode (see [`Config::dev_keys`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DevKeys {
    /// A `role: anon` JWT.
    pub anon: String,
    /// A `role: service_role` JWT.
    pub service_role: String,
}

impl DevKeys {
    /// Picks `ANON_KEY=` and `SERVICE_ROLE_KEY=` out of [`crate::development_keys`]' lines.
    pub fn from_lines(lines: &[String]) -> Option<DevKeys> {
        let find = |name: &str| lines.iter().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
        Some(DevKeys {
            anon: find("ANON_KEY=")?,
            service_role: find("SERVICE_ROLE_KEY=")?,
        })
    }
}

/// Keys stay out of logs and panics that print the configuration.
impl std::fmt::Debug for DevKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKeys(<redacted>)")
    }
}

impl Config {
    /// Largest payload in bytes, compared like Supabase (`kb * 1000 + 500`).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_size_kb.saturating_mul(1000).saturating_add(500)
    }
}
