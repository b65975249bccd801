// Private channels authorized by RLS policies on realtime.messages, with unmodified
// supabase-js 2.119.1 against a throwaway PostgreSQL 15
// (protocol.md §9, §8.2, §6.1, §6.5, §11.2, §12.2, §12.4; tests/private_channels.rs for
// the server-side view).
//
// One cluster and one server for the file. The roles exist before the server starts (its
// grants on realtime.messages skip missing roles); the policies are created after it has
// applied its migrations (they create realtime.messages). Policies key on topic prefixes
// and on the JWT `sub`, so every test uses its own topics (topicName) and users:
//
//   read   (select): topics `rw-…` and `ro-…`, for every authenticated user except
//                    sub "nobody"; sub "presence-only" reads only the presence extension
//   write  (insert): topics `rw-…` for every authenticated user; `ro-…` only for sub "writer"
//   anon:            no policy at all
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, withTimeout, token, describe, assertNone } from './harness.mjs'
import { startPg } from './pg.mjs'

const ROLES = `create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;`

const SUB = `coalesce(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')`
const POLICIES = `
create policy "read rw and ro" on realtime.messages for select to authenticated
  using (
    ((select realtime.topic()) like 'rw-%' or (select realtime.topic()) like 'ro-%')
    and ${SUB} <> 'nobody'
    and (extension = 'presence' or ${SUB} <> 'presence-only')
  );
create policy "write rw, writer writes ro" on realtime.messages for insert to authenticated
  with check (
    (select realtime.topic()) like 'rw-%'
    or ((select realtime.topic()) like 'ro-%' and ${SUB} = 'writer')
  );
`

let pg
let server
before(async () => {
  pg = await startPg()
  await pg.sql(ROLES)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
  // Migrations ran before the server listened.
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

const userToken = (sub) => token({ role: 'authenticated', sub })
const asUser = (sub) => async () => userToken(sub)
const PRIVATE = { private: true }
const isEvent = (name) => (m) => m.event === name
const noReadReason = (topic) => `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`

/** Subscribe a private channel (not waiting for SUBSCRIBED). */
async function privateChannel(ctx, topic, { sub, name, vsn, config = {}, presence = false } = {}) {
  const client = ctx.client({ name: name ?? sub ?? 'anon', vsn, accessToken: sub ? asUser(sub) : undefined })
  if (sub) await withTimeout(client.realtime.setAuth(), 5000, `${name ?? sub}: setAuth() via accessToken callback`)
  const rec = ctx.channel(client, topic, { config: { ...PRIVATE, ...config }, presence })
  rec.subscribe()
  return rec
}

async function joinPrivate(ctx, topic, opts) {
  const rec = await privateChannel(ctx, topic, opts)
  await rec.subscribed()
  return rec
}

// ---------------------------------------------------------------- join

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: a private join is allowed or refused by the select policy on realtime.topic()`, srv, async (ctx) => {
    const allowed = topicName('rw')
    const refused = topicName('no')

    const ok = await joinPrivate(ctx, allowed, { sub: 'u1', vsn })
    assert.deepEqual(ok.statuses.items.map((s) => s.status), ['SUBSCRIBED'])

    // authenticated, but no policy matches the topic
    const denied = await privateChannel(ctx, refused, { sub: 'u1', vsn, name: 'u1 on refused topic' })
    const err = await denied.statuses.waitFor(() => true, 10000, 'the join outcome')
    assert.equal(err.status, 'CHANNEL_ERROR', describe(err))
    assert.equal(err.error, noReadReason(refused))
    assert.deepEqual(err.cause, { reason: noReadReason(refused) })

    // anon: no policy at all, even on the allowed topic
    const anon = await privateChannel(ctx, allowed, { vsn, name: 'anon on allowed topic' })
    const anonErr = await anon.statuses.waitFor(() => true, 10000, 'the anon join outcome')
    assert.equal(anonErr.status, 'CHANNEL_ERROR', describe(anonErr))
    assert.equal(anonErr.error, noReadReason(allowed))

    // sub "nobody" is excluded by the policy
    const nobody = await privateChannel(ctx, allowed, { sub: 'nobody', vsn })
    const nobodyErr = await nobody.statuses.waitFor(() => true, 10000, 'the nobody join outcome')
    assert.equal(nobodyErr.status, 'CHANNEL_ERROR', describe(nobodyErr))
    assert.equal(nobodyErr.error, noReadReason(allowed))

    // A public channel of the same name is another topic, open to all and apart from the private one.
    const pub = await ctx.join(refused, { vsn, name: 'public member' })
    const pubSameName = await ctx.join(allowed, { vsn, name: 'public member of the allowed name' })
    const other = await joinPrivate(ctx, allowed, { sub: 'u2', vsn })
    assert.equal(await ok.channel.send({ type: 'broadcast', event: 'private-hello', payload: { n: 1 } }), 'ok')
    const got = await other.broadcasts.waitFor(isEvent('private-hello'), 5000, 'private-hello on the other private member')
    assert.deepEqual(got.payload, { n: 1 })
    await sleep(400)
    assertNone(pubSameName.broadcasts, () => true, 'public member of the same name must get nothing from the private topic')
    assertNone(pub.broadcasts, () => true, 'public member of another topic must get nothing')
  })
}

// ---------------------------------------------------------------- broadcast write

scenario('read-only members broadcast into the void (even with ack); read+write members reach everyone', srv, async (ctx) => {
  const topic = topicName('ro')
  const observer = await joinPrivate(ctx, topic, { sub: 'observer' })
  const reader = await joinPrivate(ctx, topic, { sub: 'reader', config: { broadcast: { ack: true } } })
  const writer = await joinPrivate(ctx, topic, { sub: 'writer', config: { broadcast: { ack: true } } })
  const v1Observer = await joinPrivate(ctx, topic, { sub: 'observer-v1', vsn: '1.0.0' })

  // Denied writes get no reply at all, even with ack: supabase-js times out.
  const readerResult = await withTimeout(
    reader.channel.send({ type: 'broadcast', event: 'from-reader', payload: { n: 1 } }, { timeout: 1500 }),
    5000,
    'reader send() with ack'
  )
  assert.equal(readerResult, 'timed out', 'a read-only member gets no ack for its dropped broadcast')

  const writerResult = await withTimeout(
    writer.channel.send({ type: 'broadcast', event: 'from-writer', payload: { n: 2 } }),
    5000,
    'writer send() with ack'
  )
  assert.equal(writerResult, 'ok', 'an authorized broadcast is acked')
  for (const rec of [observer, reader, v1Observer]) {
    const m = await rec.broadcasts.waitFor(isEvent('from-writer'), 5000, `from-writer on ${rec.client.__label}`)
    assert.deepEqual(m, { type: 'broadcast', event: 'from-writer', payload: { n: 2 } })
  }

  // Without ack as well; then give the dropped message every chance to show up.
  assert.equal(await reader.channel.send({ type: 'broadcast', event: 'from-reader', payload: { n: 3 } }, { timeout: 1000 }), 'timed out')
  await sleep(500)
  for (const rec of [observer, writer, v1Observer]) {
    assertNone(rec.broadcasts, isEvent('from-reader'), `${rec.client.__label} must never get the read-only member's broadcasts`)
  }
  // The reader is still a member: it keeps receiving.
  assert.deepEqual(reader.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
  assert.deepEqual(reader.system.items, [], 'a dropped broadcast is silent (no system message)')
})

scenario('read+write topic: every member may broadcast (v2 binary push and v1 JSON push)', srv, async (ctx) => {
  const topic = topicName('rw')
  const a = await joinPrivate(ctx, topic, { sub: 'a', config: { broadcast: { ack: true } } })
  const b = await joinPrivate(ctx, topic, { sub: 'b', vsn: '1.0.0', config: { broadcast: { ack: true } } })
  assert.equal(await a.channel.send({ type: 'broadcast', event: 'ping', payload: { from: 'a' } }), 'ok')
  assert.deepEqual((await b.broadcasts.waitFor(isEvent('ping'), 5000, 'ping on b')).payload, { from: 'a' })
  assert.equal(await b.channel.send({ type: 'broadcast', event: 'pong', payload: { from: 'b' } }), 'ok')
  assert.deepEqual((await a.broadcasts.waitFor(isEvent('pong'), 5000, 'pong on a')).payload, { from: 'b' })
  // self: false (the default) — nobody gets its own message back
  await sleep(300)
  assertNone(a.broadcasts, isEvent('ping'), 'a must not get its own ping')
  assertNone(b.broadcasts, isEvent('pong'), 'b must not get its own pong')
})

// ---------------------------------------------------------------- presence

scenario('presence: without write track() resolves "error"; with read the member still syncs the others', srv, async (ctx) => {
  const topic = topicName('ro')
  const reader = await joinPrivate(ctx, topic, { sub: 'reader', presence: true, config: { presence: { key: 'reader' } } })
  await reader.presence.waitFor((e) => e.event === 'sync', 5000, 'initial (empty) sync on the reader')
  assert.deepEqual(reader.channel.presenceState(), {})

  const trackResult = await withTimeout(reader.channel.track({ name: 'Reader' }), 12000, 'reader.track()')
  assert.equal(trackResult, 'error', 'track() without a write policy must resolve "error"')

  const writer = await joinPrivate(ctx, topic, { sub: 'writer', presence: true, config: { presence: { key: 'writer' } } })
  assert.equal(await withTimeout(writer.channel.track({ name: 'Writer' }), 10000, 'writer.track()'), 'ok')

  const join = await reader.presence.waitFor((e) => e.event === 'join' && e.key === 'writer', 5000, 'writer join on the reader')
  assert.equal(join.newPresences.length, 1)
  assert.equal(join.newPresences[0].name, 'Writer')
  await reader.presence.waitFor(
    (e) => e.event === 'sync' && Object.keys(e.state).join() === 'writer',
    5000,
    'a sync on the reader with exactly the writer'
  )
  // the reader's refused track never shows up anywhere
  await sleep(400)
  assert.deepEqual(Object.keys(writer.channel.presenceState()), ['writer'])
  assert.deepEqual(Object.keys(reader.channel.presenceState()), ['writer'])
  assertNone(writer.presence, (e) => e.key === 'reader', 'the writer must never see the reader')
  // A refused track does not close the channel.
  assert.deepEqual(reader.statuses.items.map((s) => s.status), ['SUBSCRIBED'])

  // untrack on the writer reaches the read-only member as a leave
  assert.equal(await withTimeout(writer.channel.untrack(), 10000, 'writer.untrack()'), 'ok')
  await reader.presence.waitFor((e) => e.event === 'leave' && e.key === 'writer', 5000, 'writer leave on the reader')
})

scenario('presence: read+write members track and see each other on a private topic', srv, async (ctx) => {
  const topic = topicName('rw')
  const a = await joinPrivate(ctx, topic, { sub: 'a', presence: true, config: { presence: { key: 'alice' } } })
  const b = await joinPrivate(ctx, topic, { sub: 'b', vsn: '1.0.0', presence: true, config: { presence: { key: 'bob' } } })
  assert.equal(await withTimeout(a.channel.track({ n: 1 }), 10000, 'a.track()'), 'ok')
  assert.equal(await withTimeout(b.channel.track({ n: 2 }), 10000, 'b.track()'), 'ok')
  for (const rec of [a, b]) {
    await rec.presence.waitFor(
      (e) => e.event === 'sync' && Object.keys(e.state).sort().join() === 'alice,bob',
      5000,
      `${rec.client.__label} syncs alice and bob`
    )
  }
})

// ---------------------------------------------------------------- token refresh

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: setAuth() to a user the read policy refuses closes the channel (system error, CLOSED, no rejoin)`, srv, async (ctx) => {
    const topic = topicName('rw')
    const rec = await joinPrivate(ctx, topic, { sub: 'u1', vsn })
    const peer = await joinPrivate(ctx, topic, { sub: 'peer' })

    // A refresh to another authorized user keeps the channel.
    await withTimeout(rec.client.realtime.setAuth(userToken('u1-again')), 5000, 'setAuth(authorized user)')
    await sleep(500)
    assert.deepEqual(rec.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
    assert.deepEqual(rec.system.items, [])
    await peer.channel.send({ type: 'broadcast', event: 'still-here', payload: {} })
    await rec.broadcasts.waitFor(isEvent('still-here'), 5000, 'broadcast after an authorized refresh')

    const refused = userToken('nobody')
    await withTimeout(rec.client.realtime.setAuth(refused), 5000, 'setAuth(refused user)')
    assert.ok(
      rec.client.__log.some((l) => / push realtime:\S+ access_token /.test(l) && l.includes(refused)),
      'test precondition: supabase-js pushed access_token'
    )
    const closed = await rec.statuses.waitFor((s) => s.status !== 'SUBSCRIBED', 5000, 'the channel closing')
    assert.equal(closed.status, 'CLOSED', describe(rec.statuses.items))
    const sys = await rec.system.waitFor(() => true, 1000, 'the system message')
    assert.deepEqual(sys, {
      channel: topic,
      extension: 'system',
      message: `You do not have permissions to read from this Channel topic: ${topic}`,
      status: 'error',
    })
    // no automatic rejoin after the server closed the channel
    await sleep(2500)
    assert.deepEqual(rec.statuses.items.map((s) => s.status), ['SUBSCRIBED', 'CLOSED'])
    assert.equal(rec.client.getChannels().length, 0, 'supabase-js removed the closed channel')
    await peer.channel.send({ type: 'broadcast', event: 'after-close', payload: {} })
    await sleep(400)
    assertNone(rec.broadcasts, isEvent('after-close'), 'a closed channel receives nothing')
  })
}

scenario('setAuth() that takes away broadcast read but keeps presence read: "You no longer have permission…"', srv, async (ctx) => {
  const topic = topicName('rw')
  const rec = await joinPrivate(ctx, topic, { sub: 'u1', presence: true, config: { presence: { key: 'u1' } } })
  await withTimeout(rec.client.realtime.setAuth(userToken('presence-only')), 5000, 'setAuth(presence-only user)')
  const closed = await rec.statuses.waitFor((s) => s.status !== 'SUBSCRIBED', 5000, 'the channel closing')
  assert.equal(closed.status, 'CLOSED', describe(rec.statuses.items))
  const sys = await rec.system.waitFor(() => true, 1000, 'the system message')
  assert.deepEqual(sys, {
    channel: topic,
    extension: 'system',
    message: `You no longer have permission to read from this Channel topic: ${topic}`,
    status: 'error',
  })
})

scenario('a presence-only reader may join a presence-enabled private channel but gets no broadcasts', srv, async (ctx) => {
  const topic = topicName('rw')
  // presence not enabled: only broadcast read counts → refused
  const plain = await privateChannel(ctx, topic, { sub: 'presence-only', name: 'presence-only without presence' })
  const err = await plain.statuses.waitFor(() => true, 10000, 'join outcome without presence')
  assert.equal(err.status, 'CHANNEL_ERROR', describe(err))
  assert.equal(err.error, noReadReason(topic))

  const rec = await joinPrivate(ctx, topic, {
    sub: 'presence-only',
    name: 'presence-only with presence',
    presence: true,
    config: { presence: { key: 'po' } },
  })
  const writer = await joinPrivate(ctx, topic, { sub: 'w', presence: true, config: { presence: { key: 'w' } } })
  assert.equal(await withTimeout(writer.channel.track({ on: true }), 10000, 'writer.track()'), 'ok')
  await rec.presence.waitFor((e) => e.event === 'join' && e.key === 'w', 5000, 'presence join on the presence-only member')
  await writer.channel.send({ type: 'broadcast', event: 'hidden', payload: {} })
  const control = await joinPrivate(ctx, topic, { sub: 'control' })
  await writer.channel.send({ type: 'broadcast', event: 'marker', payload: {} })
  await control.broadcasts.waitFor(isEvent('marker'), 5000, 'marker on a full reader')
  await sleep(400)
  assertNone(rec.broadcasts, () => true, 'no broadcast read → no broadcasts')
})

// ---------------------------------------------------------------- REST

scenario('httpSend on a private channel: 403 Unauthorized without write, 202 and delivered with it', srv, async (ctx) => {
  const topic = topicName('ro')
  const member = await joinPrivate(ctx, topic, { sub: 'member' })
  const publicMember = await ctx.join(topic, { name: 'public member' })

  /** A REST-only client whose HTTP statuses are recorded via the public `fetch` option. */
  async function restClient(sub, name) {
    const statuses = []
    const recordingFetch = async (...args) => {
      const res = await fetch(...args)
      statuses.push({ url: String(args[0]), status: res.status })
      return res
    }
    const client = ctx.client({ name, accessToken: sub ? asUser(sub) : undefined, realtime: { fetch: recordingFetch } })
    if (sub) await withTimeout(client.realtime.setAuth(), 5000, `${name}: setAuth()`)
    return { client, statuses, channel: client.channel(topic, { config: PRIVATE }) }
  }

  const reader = await restClient('reader', 'REST reader')
  await assert.rejects(withTimeout(reader.channel.httpSend('denied', { k: 1 }), 10000, 'reader httpSend'), {
    message: 'Unauthorized',
  })
  assert.equal(reader.statuses.length, 1)
  assert.equal(reader.statuses[0].status, 403)
  assert.match(reader.statuses[0].url, new RegExp(`/api/broadcast/${topic}/events/denied\\?.*private=true`))

  const anon = await restClient(null, 'REST anon')
  await assert.rejects(withTimeout(anon.channel.httpSend('denied', { k: 2 }), 10000, 'anon httpSend'), { message: 'Unauthorized' })
  assert.deepEqual(anon.statuses.map((s) => s.status), [403])

  const writer = await restClient('writer', 'REST writer')
  assert.deepEqual(await withTimeout(writer.channel.httpSend('allowed', { k: 3 }), 10000, 'writer httpSend'), { success: true })
  assert.deepEqual(writer.statuses.map((s) => s.status), [202])
  const m = await member.broadcasts.waitFor(isEvent('allowed'), 5000, 'allowed on the private member')
  assert.deepEqual(m, { type: 'broadcast', event: 'allowed', payload: { k: 3 } })

  await sleep(400)
  assertNone(member.broadcasts, isEvent('denied'), 'refused REST sends must not be delivered')
  assertNone(publicMember.broadcasts, () => true, 'private REST sends must not reach the public topic of the same name')
})
