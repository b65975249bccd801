-- realtime.messages: what `realtime.send*` writes, what Broadcast from Database streams,
-- and what private-channel RLS policies are written against.
--
-- Not partitioned: an insert must never fail because the partition for today is missing
-- (Supabase issue #2250). Old rows are removed by the server's retention task instead.
--
-- `inserted_at` / `updated_at` keep Supabase's type (timestamp without time zone) but are
-- filled with UTC wall-clock time whatever the inserting session's TimeZone is, so
-- retention and replay (`since`, unix ms) can compare them without guessing a zone.
create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default true,
  updated_at timestamp without time zone not null default timezone('utc', now()),
  inserted_at timestamp without time zone not null default timezone('utc', now()),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_pkey primary key (id),
  constraint messages_extension_check check (extension in ('broadcast', 'presence')),
  -- A message is JSON or bytes, never both (authorization probe rows have neither).
  constraint messages_payload_exclusive check (payload is null or binary_payload is null)
);

-- Replay: newest rows of one topic since a time.
create index if not exists messages_topic_inserted_at_idx
  on realtime.messages (topic, inserted_at);

-- Retention: oldest rows first, without scanning the table.
create index if not exists messages_inserted_at_idx
  on realtime.messages (inserted_at);

-- Private channels are authorized by policies on this table; with RLS on and no policy,
-- nobody but the owner (and roles with BYPASSRLS) reads or writes anything.
alter table realtime.messages enable row level security;
