// Postgres Changes with unmodified supabase-js 2.119.1 against a throwaway PostgreSQL 15
// (protocol.md §7.1–7.4, §12.1; tests/postgres_changes.rs for the server-side view).
//
// The file starts one cluster (test/pg.mjs) and one server with DATABASE_URL; every test
// has its own table(s), so a change from one test can never reach another's channel.
// supabase-js reports SUBSCRIBED on the join reply, before the server has subscribed
// (§7.4), so every test waits for the `system` "Subscribed to PostgreSQL" before writing.
// Besides what the application sees (the transformed payload), some checks look at the
// raw frame the client received (realtime-js `logger`), because supabase-js converts
// string values by column type and filters bindings by event itself — both would hide
// a server that sends untyped values or wrong `ids`.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, withTimeout, token, describe, EventLog } from './harness.mjs'
import { startPg } from './pg.mjs'

const USER_A = '11111111-1111-1111-1111-111111111111'
const USER_B = '22222222-2222-2222-2222-222222222222'

const typedTable = (name) => `
create table public.${name} (
  id bigserial primary key, title text, done boolean default false, count int4, meta jsonb,
  tags text[], amount numeric, at timestamptz, day date, owner uuid, score float8);
grant select on public.${name} to anon, authenticated, service_role;`

const SCHEMA = `
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role;
${typedTable('typed_v2')}
${typedTable('typed_v1')}
create table public.filt (id int primary key, title text);
grant select on public.filt to anon, authenticated, service_role;
create table public.notes (id bigint primary key, owner uuid, body text);
alter table public.notes enable row level security;
create policy own on public.notes for select to authenticated
  using (owner = (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')::uuid);
create policy unowned on public.notes for select to anon, authenticated using (owner is null);
grant select on public.notes to anon, authenticated;
create publication supabase_realtime for table public.typed_v2, public.typed_v1, public.filt, public.notes;
`

let pg
let server
before(async () => {
  pg = await startPg()
  await pg.sql(SCHEMA)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
})
after(async () => {
  await server?.stop()
  await pg?.stop()
})
const srv = () => ({
  ...server,
  // failures also show the end of PostgreSQL's log
  stderrTail: (n) => `${server.stderrTail(n)}\n--- postgres server.log tail:\n${pg.logTail(20)}`,
})

const userToken = (sub) => token({ role: 'authenticated', sub })
const SUBSCRIBED_MSG = 'Subscribed to PostgreSQL'
const TS_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

/**
 * A supabase-js client + channel with postgres_changes bindings ({label: filter}), each
 * recorded in rec.changes[label]; subscribes and waits for SUBSCRIBED (join reply).
 */
async function pgChannel(ctx, { name, vsn, accessToken, bindings, topic = topicName('pg') }) {
  const client = ctx.client({ name, vsn, accessToken })
  if (accessToken) await withTimeout(client.realtime.setAuth(), 5000, `${name}: setAuth() via accessToken callback`)
  const rec = ctx.channel(client, topic)
  rec.topic = topic
  rec.changes = {}
  for (const [label, filter] of Object.entries(bindings)) {
    const log = new EventLog(`${name} binding ${label} ${describe(filter)}`)
    rec.channel.on('postgres_changes', filter, (payload) => log.add(payload))
    rec.changes[label] = log
  }
  rec.subscribe()
  await rec.subscribed()
  return rec
}

/** Waits for the server's postgres_changes `system` message; it must be "Subscribed to PostgreSQL". */
async function pgSubscribed(rec, timeoutMs = 15000) {
  const sys = await rec.system.waitFor(
    (m) => m?.extension === 'postgres_changes',
    timeoutMs,
    `the postgres_changes system message ("${SUBSCRIBED_MSG}")`
  )
  assert.deepEqual(
    sys,
    { channel: rec.topic, extension: 'postgres_changes', message: SUBSCRIBED_MSG, status: 'ok' },
    `${rec.client.__label}: postgres_changes subscription failed`
  )
  return rec
}

/** The binding id the server assigned to each label (from the join reply, via channel.bindings). */
function bindingIds(rec) {
  const server = rec.channel.bindings.postgres_changes ?? []
  const labels = Object.keys(rec.changes)
  assert.equal(server.length, labels.length, `binding count: ${describe(server)}`)
  return Object.fromEntries(
    labels.map((l, i) => {
      assert.ok(Number.isInteger(server[i].id), `binding ${l} has an integer id: ${describe(server[i])}`)
      return [l, server[i].id]
    })
  )
}

/** The raw postgres_changes payloads this client received (before supabase-js' transform). */
function wirePayloads(rec) {
  const marker = ` receive realtime:${rec.topic} postgres_changes `
  return rec.client.__log
    .filter((l) => l.includes(marker))
    .map((l) => {
      const text = l.slice(l.indexOf(marker) + marker.length)
      try {
        return JSON.parse(text)
      } catch {
        throw new Error(`could not parse a logged postgres_changes frame (truncated?): ${text.slice(0, 300)}`)
      }
    })
}

/** Fields every supabase-js postgres_changes payload has. */
function assertEnvelope(p, table, eventType) {
  assert.equal(p.eventType, eventType, `eventType: ${describe(p)}`)
  assert.equal(p.schema, 'public')
  assert.equal(p.table, table)
  assert.equal(p.errors, null, `errors: ${describe(p)}`)
  assert.match(String(p.commit_timestamp), TS_RE, `commit_timestamp: ${describe(p)}`)
}

for (const vsn of ['2.0.0', '1.0.0']) {
  const table = vsn === '2.0.0' ? 'typed_v2' : 'typed_v1'
  scenario(`vsn ${vsn}: typed INSERT, UPDATE and DELETE reach an event '*' binding in supabase-js' shape`, srv, async (ctx) => {
    const rec = await pgChannel(ctx, {
      name: `all(vsn ${vsn})`,
      vsn,
      bindings: { all: { event: '*', schema: 'public', table } },
    })
    await pgSubscribed(rec)

    await pg.sql(`insert into ${table} (title, done, count, meta, tags, amount, at, day, owner, score)
      values ('first "row"', true, 42, '{"k": [1, {"x": null}], "s": "é"}', '{"x y",z}', 12.50,
              '2025-11-03 09:32:55.123+00', '2025-11-03', '${USER_A}', 1.5)`)
    const ins = await rec.changes.all.waitFor((p) => p.eventType === 'INSERT', 10000, 'the INSERT')
    assertEnvelope(ins, table, 'INSERT')
    assert.deepEqual(ins.new, {
      id: 1,
      title: 'first "row"',
      done: true,
      count: 42,
      meta: { k: [1, { x: null }], s: 'é' },
      tags: ['x y', 'z'],
      amount: 12.5,
      at: '2025-11-03T09:32:55.123+00:00',
      day: '2025-11-03',
      owner: USER_A,
      score: 1.5,
    })
    assert.deepEqual(ins.old, {})

    // the server itself sends typed JSON (supabase-js would convert strings and hide it)
    const [wire] = wirePayloads(rec)
    assert.ok(wire, 'the INSERT frame is in the client log')
    assert.deepEqual(wire.ids, [bindingIds(rec).all], `ids: ${describe(wire)}`)
    const r = wire.data.record
    assert.equal(typeof r.id, 'number', `id on the wire: ${describe(r)}`)
    assert.equal(typeof r.count, 'number')
    assert.equal(typeof r.amount, 'number')
    assert.equal(r.done, true)
    assert.ok(Array.isArray(r.tags), `tags on the wire: ${describe(r.tags)}`)
    assert.equal(typeof r.meta, 'object')
    assert.equal(wire.data.type, 'INSERT')
    assert.ok(!('old_record' in wire.data), `INSERT has no old_record: ${describe(wire.data)}`)
    const types = Object.fromEntries(wire.data.columns.map((c) => [c.name, c.type]))
    assert.deepEqual(types, {
      id: 'int8', title: 'text', done: 'bool', count: 'int4', meta: 'jsonb', tags: '_text',
      amount: 'numeric', at: 'timestamptz', day: 'date', owner: 'uuid', score: 'float8',
    })
    assert.deepEqual(wire.data.columns.map((c) => c.name), Object.keys(types), 'columns in attnum order')

    await pg.sql(`update ${table} set done = false, count = count + 1, tags = array_append(tags, null) where id = 1`)
    const upd = await rec.changes.all.waitFor((p) => p.eventType === 'UPDATE', 10000, 'the UPDATE')
    assertEnvelope(upd, table, 'UPDATE')
    assert.deepEqual(upd.new, { ...ins.new, done: false, count: 43, tags: ['x y', 'z', null] })
    assert.deepEqual(upd.old, { id: 1 }, 'default replica identity: old is the primary key only')

    await pg.sql(`delete from ${table} where id = 1`)
    const del = await rec.changes.all.waitFor((p) => p.eventType === 'DELETE', 10000, 'the DELETE')
    assertEnvelope(del, table, 'DELETE')
    assert.deepEqual(del.old, { id: 1 })
    assert.deepEqual(del.new, {})
    const wireDel = wirePayloads(rec).at(-1)
    assert.ok(!('record' in wireDel.data), `DELETE has no record: ${describe(wireDel.data)}`)

    await sleep(200)
    assert.deepEqual(rec.changes.all.items.map((p) => p.eventType), ['INSERT', 'UPDATE', 'DELETE'], 'each change exactly once')
    assert.deepEqual(rec.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
  })
}

scenario('filters: id=eq.2 gets only row 2, id=in.(1,3) rows 1 and 3, an INSERT binding never fires on UPDATE', srv, async (ctx) => {
  const t = { schema: 'public', table: 'filt' }
  const rec = await pgChannel(ctx, {
    name: 'filters',
    bindings: {
      eq: { event: '*', ...t, filter: 'id=eq.2' },
      in: { event: '*', ...t, filter: 'id=in.(1,3)' },
      insertOnly: { event: 'INSERT', ...t },
      deleteOnly: { event: 'DELETE', ...t, filter: 'id=eq.3' },
    },
  })
  await pgSubscribed(rec)
  const ids = bindingIds(rec)

  await pg.sql(`insert into filt values (1, 'a'), (2, 'b'), (3, 'c')`)
  await pg.sql(`update filt set title = 'b2' where id = 2`)
  await pg.sql(`update filt set title = 'a2' where id = 1`)
  await pg.sql(`delete from filt where id = 3`)
  await pg.sql(`insert into filt values (4, 'sentinel')`)
  await rec.changes.insertOnly.waitFor((p) => p.new?.id === 4, 10000, 'the sentinel INSERT of row 4')
  await sleep(300)

  const seen = (label) => rec.changes[label].items.map((p) => `${p.eventType} ${p.new?.id ?? p.old?.id}`)
  assert.deepEqual(seen('eq'), ['INSERT 2', 'UPDATE 2'])
  assert.deepEqual(seen('in'), ['INSERT 1', 'INSERT 3', 'UPDATE 1', 'DELETE 3'], 'in; DELETE is filtered on the old identity')
  assert.deepEqual(seen('insertOnly'), ['INSERT 1', 'INSERT 2', 'INSERT 3', 'INSERT 4'])
  assert.deepEqual(seen('deleteOnly'), ['DELETE 3'])
  const upd2 = rec.changes.eq.items[1]
  assert.deepEqual(upd2.new, { id: 2, title: 'b2' })
  assert.deepEqual(upd2.old, { id: 2 })

  // on the wire: one frame per change, `ids` = exactly the bindings that match it
  // (supabase-js also filters by event itself, which would hide extra ids)
  const wire = wirePayloads(rec).map((w) => ({
    change: `${w.data.type} ${(w.data.record ?? w.data.old_record)?.id}`,
    ids: [...w.ids].sort((a, b) => a - b),
  }))
  const sorted = (...xs) => xs.sort((a, b) => a - b)
  assert.deepEqual(wire, [
    { change: 'INSERT 1', ids: sorted(ids.in, ids.insertOnly) },
    { change: 'INSERT 2', ids: sorted(ids.eq, ids.insertOnly) },
    { change: 'INSERT 3', ids: sorted(ids.in, ids.insertOnly) },
    { change: 'UPDATE 2', ids: sorted(ids.eq) },
    { change: 'UPDATE 1', ids: sorted(ids.in) },
    { change: 'DELETE 3', ids: sorted(ids.in, ids.deleteOnly) },
    { change: 'INSERT 4', ids: sorted(ids.insertOnly) },
  ])
})

scenario('RLS per user via the accessToken option: each user gets only their rows, the anon key none', srv, async (ctx) => {
  const topic = topicName('notes')
  const binding = { all: { event: '*', schema: 'public', table: 'notes' } }
  const tokenA = userToken(USER_A)
  const tokenB = userToken(USER_B)
  const a = await pgChannel(ctx, { name: 'user-a', topic, accessToken: async () => tokenA, bindings: binding })
  const b = await pgChannel(ctx, { name: 'user-b(vsn 1.0.0)', topic, vsn: '1.0.0', accessToken: async () => tokenB, bindings: binding })
  const anon = await pgChannel(ctx, { name: 'anon', topic, bindings: binding })
  await Promise.all([pgSubscribed(a), pgSubscribed(b), pgSubscribed(anon)])
  const joinCarries = (r, tok) => r.client.__log.some((l) => / push realtime:\S+ phx_join /.test(l) && l.includes(tok))
  assert.ok(joinCarries(a, tokenA) && joinCarries(b, tokenB), 'test precondition: each join carries its user token')

  await pg.sql(`insert into notes values (1, '${USER_A}', 'for a')`)
  await pg.sql(`insert into notes values (2, '${USER_B}', 'for b')`)
  // visible to everyone (policy `unowned`): once it has arrived, the earlier rows would have too
  await pg.sql(`insert into notes values (3, null, 'for all')`)
  for (const r of [a, b, anon]) {
    await r.changes.all.waitFor((p) => p.new?.id === 3, 10000, `the unowned row 3 on ${r.client.__label}`)
  }
  await sleep(300)
  const rows = (r) => r.changes.all.items.map((p) => `${p.eventType} ${p.new?.id}`)
  assert.deepEqual(rows(a), ['INSERT 1', 'INSERT 3'], 'user A')
  assert.deepEqual(rows(b), ['INSERT 2', 'INSERT 3'], 'user B')
  assert.deepEqual(rows(anon), ['INSERT 3'], 'anon key')
  assert.deepEqual(a.changes.all.items[0].new, { id: 1, owner: USER_A, body: 'for a' })
  assert.deepEqual(b.changes.all.items[0].new, { id: 2, owner: USER_B, body: 'for b' })
})

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: a missing table gets Supabase's system error and the channel stays SUBSCRIBED`, srv, async (ctx) => {
    const rec = await pgChannel(ctx, {
      name: `missing(vsn ${vsn})`,
      vsn,
      bindings: { all: { event: '*', schema: 'public', table: 'doesnotexist' } },
    })
    const sys = await rec.system.waitFor((m) => m?.extension === 'postgres_changes', 15000, 'the postgres_changes system message')
    assert.deepEqual(sys, {
      channel: rec.topic,
      extension: 'postgres_changes',
      message:
        'Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: doesnotexist, filters: [], select: nil]',
      status: 'error',
    })
    await sleep(500)
    assert.deepEqual(rec.statuses.items.map((s) => s.status), ['SUBSCRIBED'], 'no CHANNEL_ERROR/CLOSED after the system error')
    assert.equal(rec.channel.state, 'joined')
    assert.equal(rec.system.items.length, 1, `exactly one system message (no retry): ${describe(rec.system.items)}`)
    assert.ok(!rec.client.__log.some((l) => / receive realtime:\S+ (phx_close|phx_error)/.test(l)), 'no phx_close/phx_error')
  })
}
