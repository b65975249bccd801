-- The SQL API apps call from triggers and functions, with Supabase's names and signatures.

-- The topic being authorized (set by the server before evaluating policies, and by
-- realtime.send for the row it inserts). NULL when unset rather than '' (a custom setting
-- reads as '' once a transaction that set it locally has ended).
create or replace function realtime.topic()
returns text
language sql
stable
as $fn$
  select nullif(current_setting('realtime.topic', true), '');
$fn$;

-- Broadcast a JSON message to `realtime:<topic>`. Adds "id" to an object payload that has
-- none (a NULL payload becomes {"id": …}). Never aborts the caller: any failure (NULL topic,
-- RLS refusing the insert, …) is reported as a WARNING and the message is dropped.
create or replace function realtime.send(
  payload jsonb,
  event text,
  topic text,
  private boolean default true
)
returns void
language plpgsql
volatile
as $fn$
declare
  message_id uuid := gen_random_uuid();
  body jsonb := coalesce(payload, '{}'::jsonb);
begin
  begin
    if jsonb_typeof(body) = 'object' and not (body ? 'id') then
      body := body || jsonb_build_object('id', message_id);
    end if;
    -- Lets INSERT policies on realtime.messages test realtime.topic().
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, topic, extension, event, payload, private)
    values (message_id, topic, 'broadcast', event, body, private);
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$fn$;

-- Broadcast bytes; receivers on protocol 2.0.0 get them as a binary payload, 1.0.0 sockets
-- cannot carry them and get nothing. Same error handling as realtime.send.
create or replace function realtime.send_binary(
  payload bytea,
  event text,
  topic text,
  private boolean default true
)
returns void
language plpgsql
volatile
as $fn$
declare
  message_id uuid := gen_random_uuid();
begin
  begin
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, topic, extension, event, binary_payload, private)
    values (message_id, topic, 'broadcast', event, coalesce(payload, ''::bytea), private);
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$fn$;

-- For row triggers: broadcast {"old_record", "record", "operation", "table", "schema"}
-- (plus the "id" realtime.send adds) on a private topic. A statement-level trigger has no
-- rows to send, so it is an error.
create or replace function realtime.broadcast_changes(
  topic_name text,
  event_name text,
  operation text,
  table_name text,
  table_schema text,
  new record,
  old record,
  level text default 'ROW'
)
returns void
language plpgsql
volatile
as $fn$
begin
  if level = 'STATEMENT' then
    raise exception 'realtime.broadcast_changes must be called from a FOR EACH ROW trigger, not FOR EACH STATEMENT';
  end if;
  -- to_jsonb is strict: the missing side (OLD on INSERT, NEW on DELETE) becomes JSON null.
  perform realtime.send(
    jsonb_build_object(
      'old_record', to_jsonb(old),
      'record', to_jsonb(new),
      'operation', operation,
      'table', table_name,
      'schema', table_schema
    ),
    event_name,
    topic_name
  );
end;
$fn$;
