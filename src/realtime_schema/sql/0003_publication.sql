-- Broadcast from Database streams new rows of realtime.messages through this publication.
-- Only inserts: retention deletes and policy probes must never reach clients.
do $do$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime_messages_publication') then
    create publication supabase_realtime_messages_publication
      for table realtime.messages with (publish = 'insert');
  elsif not exists (
    select 1 from pg_publication_tables
    where pubname = 'supabase_realtime_messages_publication'
      and schemaname = 'realtime' and tablename = 'messages'
  ) then
    -- An operator-made publication of that name without the table: add it.
    alter publication supabase_realtime_messages_publication add table realtime.messages;
  end if;
end
$do$;
