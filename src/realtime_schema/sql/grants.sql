-- Run at every start (not versioned): a role created after the first migration still gets
-- its grants on the next start. Roles that do not exist are skipped (plain Postgres has no
-- anon/authenticated).
do $do$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('grant usage on schema realtime to %I', r);
      execute format('grant select, insert, update on table realtime.messages to %I', r);
    end if;
  end loop;
end
$do$;
