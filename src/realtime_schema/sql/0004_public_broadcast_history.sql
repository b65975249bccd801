-- realtime-rs only (not a Supabase object): public broadcasts kept for replay when the
-- server runs with REPLAY_PUBLIC=true. Only the server reads and writes it: no grants to
-- client roles, and it is in no publication.
create table if not exists realtime.rs_public_broadcasts (
  id uuid primary key,
  topic text not null,
  -- unix microseconds of the server that received the broadcast (replay order; `since`
  -- is in milliseconds)
  at_us bigint not null,
  -- a broadcast sent as a whole map ({"type","event","payload"}), kept as sent
  message jsonb,
  -- or a user broadcast: event with a JSON or a binary payload
  event text,
  payload jsonb,
  binary_payload bytea
);
create index if not exists rs_public_broadcasts_topic_at
  on realtime.rs_public_broadcasts (topic, at_us desc);
create index if not exists rs_public_broadcasts_at
  on realtime.rs_public_broadcasts (at_us);
revoke all on table realtime.rs_public_broadcasts from public;
