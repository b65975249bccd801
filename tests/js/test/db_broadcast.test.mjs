// Broadcast from Database and Replay with unmodified supabase-js 2.119.1 against a
// throwaway PostgreSQL 15 (protocol.md §10, §6.3, §2.3–2.4; tests/db_broadcast.rs,
// tests/realtime_schema.rs and tests/private_channels.rs for the server-side view).
//
// One cluster and one server (no start delay) for the file; the replay de-duplication
// test starts a second server on the same database with its own slots and a start delay,
// so the stored messages are also streamed live after the join.
//
// Policies: authenticated users read every `db-…` topic (broadcast and presence);
// nobody writes. realtime.send from psql runs as the superuser (no RLS).
//
// What supabase-js hands to a broadcast listener (realtime-js _decodeUserBroadcast for V2
// type-4 frames, the frame payload for V1 JSON frames): {type, event, payload, meta?},
// where `payload` is the parsed JSON or, for a binary row, an ArrayBuffer.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Ctx, startServer, scenario, topicName, sleep, withTimeout, token, describe, assertNone, bytesOf, waitUntil } from './harness.mjs'
import { startPg } from './pg.mjs'

const ROLES = `create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;`
const POLICIES = `
create policy "read db topics" on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'db-%');
`
const MESSAGES_SLOT = 'realtime_rs_messages'
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

let pg
let server
before(async () => {
  pg = await startPg()
  await pg.sql(ROLES)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
  await pg.sql(POLICIES)
  await waitStreaming(MESSAGES_SLOT)
})
after(async () => {
  await server?.stop()
  await pg?.stop()
})
const srv = () => ({
  ...server,
  stderrTail: (n) => `${server.stderrTail(n)}\n--- postgres server.log tail:\n${pg.logTail(20)}`,
})

/** Until the server streams `slot` (a row inserted before that is not in the slot). */
async function waitStreaming(slot, timeoutMs = 20000) {
  await waitUntil(
    async () => (await pg.query(`select active from pg_replication_slots where slot_name = '${slot}'`))[0] === 't',
    timeoutMs,
    `the server streams slot ${slot}`,
    100
  )
}

const asUser = (sub) => async () => token({ role: 'authenticated', sub })
const isEvent = (name) => (m) => m.event === name

async function joinPrivate(ctx, topic, { sub = 'reader', vsn, name, config = {} } = {}) {
  return ctx.join(topic, { vsn, name: name ?? `${sub}(private${vsn ? ` vsn ${vsn}` : ''})`, accessToken: asUser(sub), config: { private: true, ...config } })
}

/** Row ids of topic's messages for an event, oldest first. */
async function rowIds(topic, event) {
  return pg.query(`select id::text from realtime.messages where topic = '${topic}' and event = '${event}' order by inserted_at`)
}

/** The broadcast supabase-js delivered: {type, event, payload, meta: {id}} with a uuid id. */
function assertDbBroadcast(m, event, payloadWithoutId, label) {
  assert.equal(m.type, 'broadcast', `${label}: ${describe(m)}`)
  assert.equal(m.event, event, `${label}: ${describe(m)}`)
  assert.deepEqual(Object.keys(m).sort(), ['event', 'meta', 'payload', 'type'], `${label}: ${describe(m)}`)
  assert.deepEqual(Object.keys(m.meta), ['id'], `${label}: meta is exactly {id}: ${describe(m.meta)}`)
  assert.match(m.meta.id, UUID_RE, `${label}: meta.id`)
  assert.deepEqual(m.payload, { ...payloadWithoutId, id: m.meta.id }, `${label}: payload carries the message id`)
  return m.meta.id
}

// ---------------------------------------------------------------- realtime.send

scenario('realtime.send(…, private => false) reaches public V2 and V1 members with the row id as meta.id and payload.id', srv, async (ctx) => {
  const topic = topicName('db-pub')
  const v2 = await ctx.join(topic, { name: 'public V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'public V1' })
  const priv = await joinPrivate(ctx, topic)
  const elsewhere = await ctx.join(topicName('db-elsewhere'), { name: 'other topic' })

  await pg.sql(`select realtime.send('{"v": 1, "s": "é", "nested": {"a": [1, null]}}', 'ev', '${topic}', false)`)
  const expected = { v: 1, s: 'é', nested: { a: [1, null] } }
  const a = await v2.broadcasts.waitFor(isEvent('ev'), 10000, 'ev on public V2')
  const idA = assertDbBroadcast(a, 'ev', expected, 'V2')
  const b = await v1.broadcasts.waitFor(isEvent('ev'), 10000, 'ev on public V1')
  const idB = assertDbBroadcast(b, 'ev', expected, 'V1')
  assert.equal(idA, idB, 'both members get the same id')
  assert.deepEqual(await rowIds(topic, 'ev'), [idA], 'meta.id is the realtime.messages row id')

  // An id already in the payload is kept; meta.id is still the row id.
  await pg.sql(`select realtime.send('{"id": "mine", "k": 2}', 'own-id', '${topic}', false)`)
  const c = await v2.broadcasts.waitFor(isEvent('own-id'), 10000, 'own-id on public V2')
  const [rowId] = await rowIds(topic, 'own-id')
  assert.deepEqual(c, { type: 'broadcast', event: 'own-id', payload: { id: 'mine', k: 2 }, meta: { id: rowId } })
  const d = await v1.broadcasts.waitFor(isEvent('own-id'), 10000, 'own-id on public V1')
  assert.deepEqual(d, c)

  await sleep(400)
  assertNone(priv.broadcasts, () => true, 'a private member of the same name gets no public row')
  assertNone(elsewhere.broadcasts, () => true, 'a member of another topic gets nothing')
  assert.equal(v2.broadcasts.items.length, 2, `V2 got each message once: ${describe(v2.broadcasts.items)}`)
  assert.equal(v1.broadcasts.items.length, 2, `V1 got each message once: ${describe(v1.broadcasts.items)}`)
})

scenario('realtime.send(…) private (explicit and by default) reaches private V2 and V1 members only', srv, async (ctx) => {
  const topic = topicName('db-priv')
  const v2 = await joinPrivate(ctx, topic, { sub: 'u2' })
  const v1 = await joinPrivate(ctx, topic, { sub: 'u1', vsn: '1.0.0' })
  const pubV2 = await ctx.join(topic, { name: 'public V2' })
  const pubV1 = await ctx.join(topic, { vsn: '1.0.0', name: 'public V1' })

  await pg.sql(`select realtime.send('{"secret": 1}', 'explicit', '${topic}', true)`)
  await pg.sql(`select realtime.send('{"secret": 2}', 'by-default', '${topic}')`)
  for (const [event, secret] of [['explicit', 1], ['by-default', 2]]) {
    const [rowId] = await rowIds(topic, event)
    for (const rec of [v2, v1]) {
      const m = await rec.broadcasts.waitFor(isEvent(event), 10000, `${event} on ${rec.client.__label}`)
      assert.deepEqual(m, { type: 'broadcast', event, payload: { secret, id: rowId }, meta: { id: rowId } })
    }
  }
  // order within the topic is the commit order
  assert.deepEqual(v2.broadcasts.items.map((m) => m.event), ['explicit', 'by-default'])
  assert.deepEqual(v1.broadcasts.items.map((m) => m.event), ['explicit', 'by-default'])
  await sleep(400)
  assertNone(pubV2.broadcasts, () => true, 'public V2 member gets no private row')
  assertNone(pubV1.broadcasts, () => true, 'public V1 member gets no private row')
})

scenario('many realtime.send rows in one transaction arrive in order, once each', srv, async (ctx) => {
  const topic = topicName('db-bulk')
  const v2 = await ctx.join(topic, { name: 'bulk V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'bulk V1' })
  await pg.sql(`select realtime.send(jsonb_build_object('n', g), 'n', '${topic}', false) from generate_series(1, 50) g`)
  const want = Array.from({ length: 50 }, (_, i) => i + 1)
  for (const rec of [v2, v1]) {
    await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 50, 15000, `50 messages on ${rec.client.__label}`)
    await sleep(300)
    assert.deepEqual(rec.broadcasts.items.map((m) => m.payload.n), want)
  }
})

// ---------------------------------------------------------------- broadcast_changes

scenario('realtime.broadcast_changes from a row trigger: INSERT, UPDATE and DELETE payloads on a private topic', srv, async (ctx) => {
  const topic = topicName('db-items')
  const table = `items_${topic.replace(/[^a-z0-9]/g, '_')}`.slice(0, 60)
  await pg.sql(`
    create table public.${table} (id int primary key, name text, tags text[], meta jsonb);
    create function public.${table}_changed() returns trigger language plpgsql security definer as $$
    begin
      perform realtime.broadcast_changes('${topic}', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
      return null;
    end $$;
    create trigger ${table}_changed after insert or update or delete on public.${table}
      for each row execute function public.${table}_changed();`)
  const v2 = await joinPrivate(ctx, topic, { sub: 'v2' })
  const v1 = await joinPrivate(ctx, topic, { sub: 'v1', vsn: '1.0.0' })
  const pub = await ctx.join(topic, { name: 'public member' })

  await pg.sql(`insert into public.${table} values (1, 'a', '{x,y}', '{"k": true}')`)
  await pg.sql(`update public.${table} set name = 'b' where id = 1`)
  await pg.sql(`delete from public.${table} where id = 1`)

  const rowA = { id: 1, name: 'a', tags: ['x', 'y'], meta: { k: true } }
  const rowB = { ...rowA, name: 'b' }
  const expected = [
    ['INSERT', null, rowA],
    ['UPDATE', rowA, rowB],
    ['DELETE', rowB, null],
  ]
  for (const rec of [v2, v1]) {
    await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 3, 10000, `3 changes on ${rec.client.__label}`)
    assert.deepEqual(rec.broadcasts.items.map((m) => m.event), ['INSERT', 'UPDATE', 'DELETE'], rec.client.__label)
    rec.broadcasts.items.forEach((m, i) => {
      const [operation, oldRecord, record] = expected[i]
      assertDbBroadcast(
        m,
        operation,
        { old_record: oldRecord, record, operation, table, schema: 'public' },
        `${rec.client.__label} ${operation}`
      )
    })
  }
  assert.deepEqual(
    v2.broadcasts.items.map((m) => m.meta.id),
    v1.broadcasts.items.map((m) => m.meta.id),
    'same ids on both encodings'
  )
  assert.deepEqual(
    v2.broadcasts.items.map((m) => m.meta.id),
    await pg.query(`select id::text from realtime.messages where topic = '${topic}' order by inserted_at`),
    'ids are the realtime.messages row ids'
  )
  await sleep(400)
  assertNone(pub.broadcasts, () => true, 'broadcast_changes sends on the private topic only')
  assert.equal(v2.broadcasts.items.length, 3)
})

// ---------------------------------------------------------------- send_binary

scenario('realtime.send_binary reaches V2 members as an ArrayBuffer with meta.id; V1 members never get it', srv, async (ctx) => {
  const topic = topicName('db-bin')
  const v2 = await ctx.join(topic, { name: 'public V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'public V1' })
  const privV2 = await joinPrivate(ctx, topic, { sub: 'p2' })

  await pg.sql(`
    select realtime.send_binary('\\x0102ff00'::bytea, 'bin', '${topic}', false);
    select realtime.send_binary('\\x7b7d'::bytea, 'bin-private', '${topic}');
    select realtime.send('{"n": "marker"}', 'marker', '${topic}', false);`)

  const bin = await v2.broadcasts.waitFor(isEvent('bin'), 10000, 'bin on V2')
  assert.ok(bin.payload instanceof ArrayBuffer, `binary payload is an ArrayBuffer: ${describe(bin)}`)
  assert.deepEqual(bytesOf(bin.payload), [1, 2, 255, 0])
  const [binId] = await rowIds(topic, 'bin')
  assert.deepEqual(bin.meta, { id: binId })
  assert.deepEqual(Object.keys(bin).sort(), ['event', 'meta', 'payload', 'type'])
  await v2.broadcasts.waitFor(isEvent('marker'), 10000, 'marker on V2')
  assert.deepEqual(v2.broadcasts.items.map((m) => m.event), ['bin', 'marker'], 'public V2: the binary row, then the marker')

  const priv = await privV2.broadcasts.waitFor(isEvent('bin-private'), 10000, 'bin-private on private V2')
  assert.ok(priv.payload instanceof ArrayBuffer, describe(priv))
  assert.deepEqual(bytesOf(priv.payload), [0x7b, 0x7d], 'bytes that look like JSON stay bytes')
  const [privId] = await rowIds(topic, 'bin-private')
  assert.deepEqual(priv.meta, { id: privId })

  const marker = await v1.broadcasts.waitFor(isEvent('marker'), 10000, 'marker on V1')
  assert.deepEqual(marker.payload.n, 'marker')
  await sleep(400)
  assert.deepEqual(v1.broadcasts.items.map((m) => m.event), ['marker'], 'V1 gets no binary row')
  assert.deepEqual(privV2.broadcasts.items.map((m) => m.event), ['bin-private'])
})

// ---------------------------------------------------------------- replay

/**
 * Waits until the server has streamed every row committed so far: a marker sent now on a
 * public topic reaches a member only after everything before it (the stream is ordered).
 * Rows stored for replay before a join must not still be in flight, or they could arrive
 * live after the join.
 */
async function drained(ctx) {
  const topic = topicName('db-drain')
  const rec = await ctx.join(topic, { name: 'drain marker' })
  await pg.sql(`select realtime.send('{}', 'drained', '${topic}', false)`)
  await rec.broadcasts.waitFor(isEvent('drained'), 10000, 'the drain marker')
}

/** Stored messages for replay tests: one realtime.send per transaction (distinct inserted_at). */
async function storeReplayFixture(ctx, topic) {
  // too old for `since`, excluded by extension / private flag / topic
  await pg.sql(`insert into realtime.messages (topic, extension, event, payload, private, inserted_at)
    values ('${topic}', 'broadcast', 'too-old', '{"n": 0}', true, timezone('utc', now()) - interval '2 hours')`)
  await pg.sql(`select realtime.send('{"n": 1}', 'm1', '${topic}', true)`)
  await pg.sql(`select realtime.send('{"n": 2}', 'm2', '${topic}', true)`)
  await pg.sql(`select realtime.send('{"public": true}', 'public', '${topic}', false)`)
  await pg.sql(`insert into realtime.messages (topic, extension, event, payload, private) values ('${topic}', 'presence', 'presence', '{}', true)`)
  await pg.sql(`select realtime.send('{"other": true}', 'other-topic', '${topic}-other', true)`)
  await pg.sql(`select realtime.send('{"n": 3}', 'm3', '${topic}', true)`)
  await pg.sql(`select realtime.send_binary('\\x0a0b'::bytea, 'm4-bin', '${topic}', true)`)
  await drained(ctx)
  const ids = {}
  for (const e of ['m1', 'm2', 'm3', 'm4-bin']) [ids[e]] = await rowIds(topic, e)
  return ids
}

scenario('replay (V2): newest `limit` stored messages since `since`, oldest first, meta.replayed; then live ones', srv, async (ctx) => {
  const topic = topicName('db-replay')
  const ids = await storeReplayFixture(ctx, topic)
  const since = Date.now() - 10 * 60 * 1000
  const rec = await joinPrivate(ctx, topic, { config: { broadcast: { replay: { since, limit: 3 } } } })

  await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 3, 10000, '3 replayed messages')
  const [m2, m3, m4] = rec.broadcasts.items
  assert.deepEqual(m2, { type: 'broadcast', event: 'm2', payload: { n: 2, id: ids.m2 }, meta: { id: ids.m2, replayed: true } })
  assert.deepEqual(m3, { type: 'broadcast', event: 'm3', payload: { n: 3, id: ids.m3 }, meta: { id: ids.m3, replayed: true } })
  assert.equal(m4.event, 'm4-bin')
  assert.ok(m4.payload instanceof ArrayBuffer, `replayed binary row is an ArrayBuffer: ${describe(m4)}`)
  assert.deepEqual(bytesOf(m4.payload), [0x0a, 0x0b])
  assert.deepEqual(m4.meta, { id: ids['m4-bin'], replayed: true })

  // a message sent after the join arrives live, without `replayed`
  await pg.sql(`select realtime.send('{"n": 5}', 'm5', '${topic}', true)`)
  const m5 = await rec.broadcasts.waitFor(isEvent('m5'), 10000, 'live m5')
  const [id5] = await rowIds(topic, 'm5')
  assert.deepEqual(m5, { type: 'broadcast', event: 'm5', payload: { n: 5, id: id5 }, meta: { id: id5 } })
  await sleep(400)
  assert.deepEqual(rec.broadcasts.items.map((m) => m.event), ['m2', 'm3', 'm4-bin', 'm5'], 'nothing else, nothing twice')
})

scenario('replay (V1): binary rows are skipped; without limit up to 25 are replayed', srv, async (ctx) => {
  const topic = topicName('db-replay-v1')
  const ids = await storeReplayFixture(ctx, topic)
  const since = Date.now() - 10 * 60 * 1000
  const v1 = await joinPrivate(ctx, topic, { vsn: '1.0.0', config: { broadcast: { replay: { since, limit: 3 } } } })
  await v1.broadcasts.waitFor(() => v1.broadcasts.items.length >= 2, 10000, '2 replayed messages on V1')
  await sleep(500)
  // newest 3 are m2, m3, m4-bin; V1 cannot carry the binary one
  assert.deepEqual(v1.broadcasts.items, [
    { type: 'broadcast', event: 'm2', payload: { n: 2, id: ids.m2 }, meta: { id: ids.m2, replayed: true } },
    { type: 'broadcast', event: 'm3', payload: { n: 3, id: ids.m3 }, meta: { id: ids.m3, replayed: true } },
  ])

  // no limit: every message since `since` (4 here, under the cap of 25)
  const all = await joinPrivate(ctx, topic, { sub: 'all', config: { broadcast: { replay: { since } } } })
  await all.broadcasts.waitFor(() => all.broadcasts.items.length >= 4, 10000, '4 replayed messages')
  await sleep(400)
  assert.deepEqual(all.broadcasts.items.map((m) => m.event), ['m1', 'm2', 'm3', 'm4-bin'])
  assert.ok(all.broadcasts.items.every((m) => m.meta.replayed === true))
  assert.deepEqual(all.broadcasts.items.map((m) => m.meta.id), [ids.m1, ids.m2, ids.m3, ids['m4-bin']])
})

scenario('replay caps at 25 messages (newest 25, oldest first)', srv, async (ctx) => {
  const topic = topicName('db-replay-cap')
  for (let i = 1; i <= 28; i++) await pg.sql(`select realtime.send('{"n": ${i}}', 'n', '${topic}', true)`)
  await drained(ctx)
  const rec = await joinPrivate(ctx, topic, { config: { broadcast: { replay: { since: 0, limit: 100 } } } })
  await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 25, 10000, '25 replayed messages')
  await sleep(500)
  assert.deepEqual(
    rec.broadcasts.items.map((m) => m.payload.n),
    Array.from({ length: 25 }, (_, i) => i + 4)
  )
})

scenario('replay: live copies of replayed messages are not delivered twice (server with a start delay)', srv, async (ctx) => {
  const slot = 'js_replay_delayed'
  const delayMs = 6000
  const t0 = Date.now()
  const delayed = await startServer({
    env: {
      DATABASE_URL: pg.url,
      MESSAGES_SLOT_NAME: slot,
      SLOT_NAME: `${slot}_pc`,
      REPLICATION_START_DELAY_MS: String(delayMs),
    },
  })
  const delayedCtx = new Ctx(delayed)
  try {
    // The server creates its slot at start, before the delay, but not necessarily before
    // it listens: rows inserted earlier would not be in the slot. Wait for it; it must not
    // be streamed yet.
    const slotState = () => pg.query(`select active from pg_replication_slots where slot_name = '${slot}'`)
    await waitUntil(async () => (await slotState()).length === 1, delayMs - 2000, `the delayed server creates slot ${slot}`, 50)
    assert.deepEqual(await slotState(), ['f'], 'test precondition: the delayed server does not stream yet')

    const topic = topicName('db-replay-dedup')
    for (const n of [1, 2, 3]) await pg.sql(`select realtime.send('{"n": ${n}}', 'ev', '${topic}', true)`)
    const ids = await rowIds(topic, 'ev')
    const rec = await joinPrivate(delayedCtx, topic, { config: { broadcast: { replay: { since: 0, limit: 2 } } } })
    const joinedAfter = Date.now() - t0
    assert.ok(joinedAfter < delayMs - 1000, `test precondition: joined ${joinedAfter} ms after start, before streaming (${delayMs} ms)`)

    await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 2, 5000, '2 replayed messages')
    assert.deepEqual(
      rec.broadcasts.items.slice(0, 2).map((m) => [m.payload.n, m.meta]),
      [
        [2, { id: ids[1], replayed: true }],
        [3, { id: ids[2], replayed: true }],
      ]
    )
    // Message 1 was not replayed (limit 2): it arrives live once streaming starts.
    const live = await rec.broadcasts.waitFor((m) => m.payload.n === 1, delayMs + 10000, 'live copy of message 1')
    assert.deepEqual(live.meta, { id: ids[0] })
    await sleep(1000)
    assert.deepEqual(
      rec.broadcasts.items.map((m) => [m.payload.n, m.meta.replayed ?? false]),
      [
        [2, true],
        [3, true],
        [1, false],
      ],
      'replayed messages are not delivered again live'
    )
  } catch (err) {
    err.message += `\n--- delayed server:\n${delayedCtx.diagnostics()}`
    throw err
  } finally {
    await delayedCtx.cleanup()
    await delayed.stop()
    await pg.sql(`select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name in ('${slot}', '${slot}_pc') and not active`).catch(() => {})
  }
}, { timeout: 90000 })

scenario('replay on a public channel: supabase-js refuses it client-side; the server refuses it too', srv, async (ctx) => {
  const topic = topicName('db-pub-replay')
  const client = ctx.client({ name: 'public replay' })
  assert.throws(() => client.channel(topic, { config: { broadcast: { replay: { since: 0 } } } }), {
    message: `tried to use replay on public channel 'realtime:${topic}'. It must be a private channel.`,
  })

  // The server's own check, reached by setting the replay config after construction
  // (channel.params is a public property of RealtimeChannel).
  const rec = ctx.channel(client, topic)
  rec.channel.params.config.broadcast.replay = { since: 0 }
  rec.subscribe()
  const s = await rec.statuses.waitFor(() => true, 10000, 'the join outcome')
  assert.equal(s.status, 'CHANNEL_ERROR', describe(s))
  assert.equal(s.error, 'UnableToReplayMessages: Replay is not allowed for public channels')
  assert.ok(
    client.__log.some((l) => / push realtime:\S+ phx_join /.test(l) && l.includes('"replay":{"since":0}')),
    'test precondition: the join carried the replay config'
  )

  // Bad params on a private channel are refused by the server (supabase-js does not check them).
  const user = ctx.client({ name: 'bad params', accessToken: asUser('u') })
  await withTimeout(user.realtime.setAuth(), 5000, 'setAuth()')
  const bad = ctx.channel(user, topicName('db-bad-replay'), { config: { private: true, broadcast: { replay: { since: 'yesterday' } } } })
  bad.subscribe()
  const b = await bad.statuses.waitFor(() => true, 10000, 'the bad-params join outcome')
  assert.equal(b.status, 'CHANNEL_ERROR', describe(b))
  assert.equal(b.error, 'UnableToReplayMessages: Replay params are not valid')
})
