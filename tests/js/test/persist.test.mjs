// `persist` (issue 14 §1): broadcasts stored in realtime.messages for replay on private
// channels, with unmodified supabase-js 2.119.1 against a throwaway PostgreSQL 15
// (tests/persist.rs covers the protocol-1.0.0 payload field and the other server-side
// refusals with raw clients).
//
// One cluster and one server for the file. Every authenticated user may read and write
// topics `rw-…`. "Once" is checked after a Broadcast from Database marker sent on the same
// private topic has arrived: the stream is ordered, so a stored row it would deliver a
// second time would have arrived before the marker.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, withTimeout, token, describe, ANON_KEY } from './harness.mjs'
import { startPg } from './pg.mjs'

const ROLES = `create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;`
const POLICIES = `
create policy "read rw" on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'rw-%');
create policy "write rw" on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) like 'rw-%');
`

let pg
let server
before(async () => {
  pg = await startPg()
  await pg.sql(ROLES)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
  await pg.sql(POLICIES)
})
after(async () => {
  await server?.stop()
  await pg?.stop()
})
const srv = () => ({
  ...server,
  stderrTail: (n) => `${server.stderrTail(n)}\n--- postgres server.log tail:\n${pg.logTail(20)}`,
})

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const isEvent = (name) => (m) => m.event === name
const asUser = (sub) => async () => token({ role: 'authenticated', sub })

async function privateChannel(ctx, topic, { sub = 'member', vsn, config = {} } = {}) {
  const client = ctx.client({ name: sub, vsn, accessToken: asUser(sub) })
  await withTimeout(client.realtime.setAuth(), 5000, `${sub}: setAuth()`)
  const rec = ctx.channel(client, topic, { config: { private: true, ...config } })
  rec.subscribe()
  await rec.subscribed()
  return rec
}

/** Sends a Broadcast from Database marker on `topic` and waits for it on `rec`. */
async function marker(rec, topic) {
  await pg.sql(`select realtime.send('{}', 'marker', '${topic}', true)`)
  await rec.broadcasts.waitFor(isEvent('marker'), 10000, 'the database marker')
}

async function storedIds(topic) {
  return pg.query(`select id::text from realtime.messages where topic = '${topic}' and event <> 'marker' order by inserted_at`)
}

async function replayed(ctx, topic, sub, count) {
  const rec = await privateChannel(ctx, topic, { sub, config: { broadcast: { replay: { since: Date.now() - 600000 } } } })
  await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= count, 10000, `${count} replayed messages`)
  await sleep(400)
  return rec.broadcasts.items
}

scenario('send() with persist (vsn 2, ack and no ack): delivered once with meta.id, replayed to a later join', srv, async (ctx) => {
  const topic = topicName('rw')
  const member = await privateChannel(ctx, topic, { sub: 'member' })
  const acked = await privateChannel(ctx, topic, { sub: 'acked', config: { broadcast: { ack: true } } })
  const plain = await privateChannel(ctx, topic, { sub: 'plain' })

  assert.equal(await acked.channel.send({ type: 'broadcast', event: 'with-ack', payload: { n: 1 }, persist: true }), 'ok')
  const a = await member.broadcasts.waitFor(isEvent('with-ack'), 5000, 'with-ack on the member')
  assert.match(a.meta?.id ?? '', UUID, describe(a))
  assert.deepEqual(a, { type: 'broadcast', event: 'with-ack', payload: { n: 1 }, meta: { id: a.meta.id } })

  assert.equal(await plain.channel.send({ type: 'broadcast', event: 'no-ack', payload: { n: 2 }, persist: { ttl: 600 } }), 'ok')
  const b = await member.broadcasts.waitFor(isEvent('no-ack'), 5000, 'no-ack on the member')
  assert.match(b.meta?.id ?? '', UUID, describe(b))

  await marker(member, topic)
  assert.deepEqual(member.broadcasts.items.map((m) => m.event), ['with-ack', 'no-ack', 'marker'], 'each once, in order')
  assert.deepEqual(await storedIds(topic), [a.meta.id, b.meta.id], 'meta.id is the stored row id')

  const later = await replayed(ctx, topic, 'later', 3)
  assert.deepEqual(later, [
    { type: 'broadcast', event: 'with-ack', payload: { n: 1 }, meta: { id: a.meta.id, replayed: true } },
    { type: 'broadcast', event: 'no-ack', payload: { n: 2 }, meta: { id: b.meta.id, replayed: true } },
    later[2],
  ])
  assert.equal(later[2].event, 'marker')
})

scenario('send() with persist and ack: a store failure resolves to the error text, nothing delivered', srv, async (ctx) => {
  const topic = topicName('rw')
  const member = await privateChannel(ctx, topic, { sub: 'member' })
  const acked = await privateChannel(ctx, topic, { sub: 'acked', config: { broadcast: { ack: true } } })
  // Valid JSON that jsonb cannot hold.
  const res = await acked.channel.send({ type: 'broadcast', event: 'nul', payload: { s: '\u0000' }, persist: true })
  assert.equal(res, 'UnableToStoreMessage: Realtime was unable to store the message')
  await marker(member, topic)
  assert.deepEqual(member.broadcasts.items.map((m) => m.event), ['marker'])
  assert.deepEqual(await storedIds(topic), [])
})

scenario('httpSend() with persist: true and { ttl }: 202, delivered once, replayed', srv, async (ctx) => {
  const topic = topicName('rw')
  const member = await privateChannel(ctx, topic, { sub: 'member' })
  const client = ctx.client({ name: 'REST writer', accessToken: asUser('writer') })
  await withTimeout(client.realtime.setAuth(), 5000, 'writer setAuth()')
  const ch = client.channel(topic, { config: { private: true } })

  assert.deepEqual(await withTimeout(ch.httpSend('rest-default', { r: 1 }, { persist: true }), 10000, 'httpSend persist'), { success: true })
  assert.deepEqual(await withTimeout(ch.httpSend('rest-ttl', { r: 2 }, { persist: { ttl: 600 } }), 10000, 'httpSend ttl'), { success: true })
  const a = await member.broadcasts.waitFor(isEvent('rest-default'), 5000, 'rest-default on the member')
  const b = await member.broadcasts.waitFor(isEvent('rest-ttl'), 5000, 'rest-ttl on the member')
  assert.deepEqual(a, { type: 'broadcast', event: 'rest-default', payload: { r: 1 }, meta: { id: a.meta.id } })
  assert.match(b.meta?.id ?? '', UUID, describe(b))
  await marker(member, topic)
  assert.deepEqual(member.broadcasts.items.map((m) => m.event), ['rest-default', 'rest-ttl', 'marker'], 'each once')
  assert.deepEqual(await storedIds(topic), [a.meta.id, b.meta.id])
  const ttls = await pg.query(
    `select extract(epoch from rs_expires_at - inserted_at)::int from realtime.messages where topic = '${topic}' and event <> 'marker' order by inserted_at`
  )
  assert.deepEqual(ttls, [String(72 * 3600), '600'], 'default lifetime = MESSAGES_RETENTION_HOURS')

  const later = await replayed(ctx, topic, 'later', 3)
  assert.deepEqual(later.slice(0, 2), [
    { type: 'broadcast', event: 'rest-default', payload: { r: 1 }, meta: { id: a.meta.id, replayed: true } },
    { type: 'broadcast', event: 'rest-ttl', payload: { r: 2 }, meta: { id: b.meta.id, replayed: true } },
  ])
})

scenario('an expired ttl is not replayed', srv, async (ctx) => {
  const topic = topicName('rw')
  const sender = await privateChannel(ctx, topic, { sub: 'sender' })
  assert.equal(await sender.channel.send({ type: 'broadcast', event: 'short', payload: {}, persist: { ttl: 1 } }), 'ok')
  const client = ctx.client({ name: 'REST writer', accessToken: asUser('writer') })
  await withTimeout(client.realtime.setAuth(), 5000, 'writer setAuth()')
  const ch = client.channel(topic, { config: { private: true } })
  await withTimeout(ch.httpSend('short-rest', {}, { persist: { ttl: 1 } }), 10000, 'httpSend ttl 1')
  assert.equal(await sender.channel.send({ type: 'broadcast', event: 'long', payload: {}, persist: true }), 'ok')
  await marker(sender, topic)
  assert.equal((await storedIds(topic)).length, 3)
  await sleep(1500)
  const later = await replayed(ctx, topic, 'later', 2)
  assert.deepEqual(later.map((m) => m.event), ['long', 'marker'])
})

scenario('persist on a public channel: refused by supabase-js, and by the server over REST', srv, async (ctx) => {
  const topic = topicName('rw')
  const client = ctx.client({ name: 'public' })
  const rec = ctx.channel(client, topic, { config: { broadcast: { ack: true, self: true } } })
  rec.subscribe()
  await rec.subscribed()
  assert.equal(await rec.channel.send({ type: 'broadcast', event: 'p', payload: {}, persist: true }), 'error')
  await assert.rejects(rec.channel.httpSend('p', {}, { persist: true }), {
    message: 'Realtime httpSend() cannot store a message on a public channel.',
  })
  // The server's own refusal, for clients that do not check.
  for (const query of ['persist=true', 'persist%5Bttl%5D=60']) {
    const res = await fetch(`${server.httpUrl}/realtime/v1/api/broadcast/${topic}/events/p?${query}`, {
      method: 'POST',
      headers: { apikey: ANON_KEY, 'Content-Type': 'application/json' },
      body: '{}',
    })
    assert.equal(res.status, 422, query)
    assert.deepEqual(await res.json(), { message: 'UnableToStoreMessage: Only broadcasts on private channels can be stored' })
  }
  await sleep(300)
  assert.deepEqual(rec.broadcasts.items, [], 'refused broadcasts are not delivered')
  assert.deepEqual(await storedIds(topic), [])
})
