-- Run at every start (not versioned): a role created after the first migration still gets
-- its grants on the next start. Roles that do not exist are skipped (plain Postgres has no
-- anon/authenticated). Grants already in place are not repeated, so a normal start writes
-- nothing to the catalog.
do $do$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      continue;
    end if;
    if not has_schema_privilege(r, 'realtime', 'usage') then
      execute format('grant usage on schema realtime to %I', r);
    end if;
    if not (has_table_privilege(r, 'realtime.messages', 'select')
        and has_table_privilege(r, 'realtime.messages', 'insert')
        and has_table_privilege(r, 'realtime.messages', 'update')) then
      execute format('grant select, insert, update on table realtime.messages to %I', r);
    end if;
  end loop;
end
$do$;
