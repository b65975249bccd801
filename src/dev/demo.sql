-- `realtime dev`'s demo table: each row has an owner and only its owner may see it, so
-- the snippet shows Postgres Changes filtered by RLS per user.
create table if not exists public.todos (
  id bigint generated always as identity primary key,
  owner uuid not null default auth.uid(),
  task text not null,
  done boolean not null default false,
  inserted_at timestamptz not null default now()
);
alter table public.todos enable row level security;
do $$
begin
  if not exists (select from pg_policies
                 where schemaname = 'public' and tablename = 'todos' and policyname = 'owners see their todos') then
    create policy "owners see their todos" on public.todos
      for select to authenticated using (owner = auth.uid());
  end if;
end $$;
grant select, insert, update, delete on public.todos to authenticated, service_role;
grant select on public.todos to anon;
