// Presence with unmodified supabase-js 2.119.1
// (protocol.md §5; checklist 29–34). The server runs with PING_INTERVAL_MS=500
// so that a frozen (SIGSTOPped) peer is detected as dead within ~1–1.5 s.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, withTimeout, spawnPeer, ANON_KEY, describe } from './harness.mjs'

let server
before(async () => {
  server = await startServer({ env: { PING_INTERVAL_MS: '500' } })
})
after(async () => {
  await server?.stop()
})
const srv = () => server

/** Wait until the channel's presenceState() satisfies pred. */
async function stateSatisfies(rec, pred, timeoutMs, label) {
  const ok = () => {
    try {
      return pred(rec.channel.presenceState())
    } catch {
      return false
    }
  }
  if (ok()) return rec.channel.presenceState()
  await rec.presence.waitFor(() => ok(), timeoutMs, `${label} (presenceState now ${describe(rec.channel.presenceState())})`)
  return rec.channel.presenceState()
}

const keysOf = (state) => Object.keys(state).sort()
const metaOf = (state, key) => {
  const metas = state[key]
  assert.ok(Array.isArray(metas), `no presences for key ${key} in ${describe(state)}`)
  assert.equal(metas.length, 1, `expected exactly one meta for ${key}, got ${describe(metas)}`)
  return metas[0]
}

async function joinPresence(ctx, topic, key, opts = {}) {
  return ctx.join(topic, { ...opts, name: opts.name ?? key, presence: true, config: { presence: { key } } })
}

scenario('3 clients: sync/join events with correct state keyed by config.presence.key; untrack and removeChannel → leave', srv, async (ctx) => {
  const topic = topicName('presence')
  const A = await joinPresence(ctx, topic, 'alice')
  // presence_state after the join: an (empty) sync
  await A.presence.waitFor((e) => e.event === 'sync', 5000, 'initial sync on A (presence_state)')
  assert.equal(await withTimeout(A.channel.track({ name: 'Alice', n: 1 }), 10000, 'A.track'), 'ok')
  // the tracker itself receives the presence_diff too
  const selfJoin = await A.presence.waitFor((e) => e.event === 'join' && e.key === 'alice', 5000, 'A sees its own join')
  assert.equal(selfJoin.newPresences.length, 1)
  assert.equal(selfJoin.newPresences[0].name, 'Alice')
  assert.equal(typeof selfJoin.newPresences[0].presence_ref, 'string')

  const B = await joinPresence(ctx, topic, 'bob')
  // B's presence_state must already contain alice
  const bInitial = await stateSatisfies(B, (s) => keysOf(s).includes('alice'), 5000, 'B initial state has alice')
  assert.deepEqual(keysOf(bInitial), ['alice'])
  assert.equal(metaOf(bInitial, 'alice').name, 'Alice')
  assert.equal(metaOf(bInitial, 'alice').n, 1)
  assert.equal(await withTimeout(B.channel.track({ name: 'Bob', n: 2 }), 10000, 'B.track'), 'ok')

  const C = await joinPresence(ctx, topic, 'carol', { vsn: '2.0.0' })
  const cInitial = await stateSatisfies(C, (s) => keysOf(s).join() === 'alice,bob', 5000, 'C initial state has alice,bob')
  assert.equal(metaOf(cInitial, 'bob').name, 'Bob')
  assert.equal(await withTimeout(C.channel.track({ name: 'Carol', n: 3 }), 10000, 'C.track'), 'ok')

  const all = ['alice', 'bob', 'carol']
  for (const rec of [A, B, C]) {
    const s = await stateSatisfies(rec, (st) => keysOf(st).join() === all.join(), 5000, 'all three present')
    assert.deepEqual(
      all.map((k) => ({ k, name: metaOf(s, k).name, n: metaOf(s, k).n })),
      [
        { k: 'alice', name: 'Alice', n: 1 },
        { k: 'bob', name: 'Bob', n: 2 },
        { k: 'carol', name: 'Carol', n: 3 },
      ]
    )
    const refs = all.map((k) => metaOf(s, k).presence_ref)
    assert.ok(refs.every((r) => typeof r === 'string' && r.length > 0), `presence_refs: ${describe(refs)}`)
    assert.equal(new Set(refs).size, 3, `presence_refs must be unique: ${describe(refs)}`)
  }
  // A saw join events for bob and carol
  await A.presence.waitFor((e) => e.event === 'join' && e.key === 'bob', 1000, 'join bob on A')
  await A.presence.waitFor((e) => e.event === 'join' && e.key === 'carol', 1000, 'join carol on A')
  const carolRef = metaOf(A.channel.presenceState(), 'carol').presence_ref

  // untrack → leave for carol everywhere
  assert.equal(await withTimeout(C.channel.untrack(), 10000, 'C.untrack'), 'ok')
  for (const rec of [A, B]) {
    const leave = await rec.presence.waitFor((e) => e.event === 'leave' && e.key === 'carol', 5000, 'leave carol')
    assert.deepEqual(leave.leftPresences.map((p) => p.presence_ref), [carolRef])
    await stateSatisfies(rec, (s) => keysOf(s).join() === 'alice,bob', 5000, 'carol gone')
  }
  await stateSatisfies(C, (s) => keysOf(s).join() === 'alice,bob', 5000, 'carol gone on C itself')

  // removeChannel (phx_leave) → leave for bob
  assert.equal(await withTimeout(B.client.removeChannel(B.channel), 10000, 'B removeChannel'), 'ok')
  await A.presence.waitFor((e) => e.event === 'leave' && e.key === 'bob', 5000, 'leave bob on A')
  const final = await stateSatisfies(A, (s) => keysOf(s).join() === 'alice', 5000, 'only alice left')
  assert.equal(metaOf(final, 'alice').name, 'Alice')
  assert.deepEqual(A.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
})

scenario('re-track with a changed payload replaces the meta (one meta per key, new values)', srv, async (ctx) => {
  const topic = topicName('retrack')
  const A = await joinPresence(ctx, topic, 'alice')
  const B = await joinPresence(ctx, topic, 'bob')
  assert.equal(await withTimeout(A.channel.track({ status: 'online' }), 10000, 'track 1'), 'ok')
  await stateSatisfies(B, (s) => s.alice?.[0]?.status === 'online', 5000, 'B sees alice online')
  assert.equal(await withTimeout(A.channel.track({ status: 'away' }), 10000, 'track 2'), 'ok')
  const s = await stateSatisfies(B, (st) => st.alice?.length === 1 && st.alice[0].status === 'away', 5000, 'B sees alice away (single meta)')
  assert.deepEqual(keysOf(s), ['alice'])
})

scenario('presence across vsn 1 and vsn 2 js clients', srv, async (ctx) => {
  const topic = topicName('presence-mixed')
  const A = await joinPresence(ctx, topic, 'v2-user')
  const B = await joinPresence(ctx, topic, 'v1-user', { vsn: '1.0.0' })
  assert.equal(await withTimeout(A.channel.track({ v: 2 }), 10000, 'A.track'), 'ok')
  assert.equal(await withTimeout(B.channel.track({ v: 1 }), 10000, 'B.track'), 'ok')
  for (const rec of [A, B]) {
    const s = await stateSatisfies(rec, (st) => keysOf(st).join() === 'v1-user,v2-user', 5000, 'both present')
    assert.equal(metaOf(s, 'v1-user').v, 1)
    assert.equal(metaOf(s, 'v2-user').v, 2)
  }
  assert.equal(await withTimeout(B.channel.untrack(), 10000, 'B.untrack'), 'ok')
  await A.presence.waitFor((e) => e.event === 'leave' && e.key === 'v1-user', 5000, 'leave v1-user on A')
  await stateSatisfies(A, (s) => keysOf(s).join() === 'v2-user', 5000, 'only v2-user left')
})

for (const signal of ['SIGKILL', 'SIGSTOP']) {
  const how = signal === 'SIGKILL' ? 'killed (SIGKILL)' : 'frozen (SIGSTOP, detected by WS pings)'
  scenario(`a tracked client in another process is ${how} → others see its leave`, srv, async (ctx) => {
    const topic = topicName(`presence-${signal.toLowerCase()}`)
    const A = await joinPresence(ctx, topic, 'watcher')
    const peer = spawnPeer(ctx, {
      url: ctx.server.httpUrl,
      key: ANON_KEY,
      topic,
      presenceKey: 'ghost',
      track: { who: 'ghost' },
    })
    const tracked = await peer.lines.waitFor((l) => l.type === 'tracked' || l.type === 'exit', 15000, 'peer tracked')
    assert.equal(tracked.type, 'tracked', `peer: ${describe(peer.lines.items)}`)
    assert.equal(tracked.result, 'ok')
    await stateSatisfies(A, (s) => s.ghost?.[0]?.who === 'ghost', 5000, 'A sees ghost')

    const t0 = Date.now()
    peer.child.kill(signal)
    const leave = await A.presence.waitFor((e) => e.event === 'leave' && e.key === 'ghost', 10000, `leave ghost after ${signal}`)
    const elapsed = Date.now() - t0
    assert.equal(leave.leftPresences.length, 1)
    await stateSatisfies(A, (s) => !('ghost' in s), 2000, 'ghost removed from state')
    if (signal === 'SIGSTOP') {
      // PING_INTERVAL_MS=500: dropped after ~2 intervals of silence; allow generous slack
      assert.ok(elapsed < 8000, `dead peer detected only after ${elapsed} ms`)
      peer.child.kill('SIGKILL')
    }
    // the watcher itself is unaffected
    assert.deepEqual(A.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
  })
}

scenario('idle live clients survive the server pings (PING_INTERVAL_MS=500) and keep working', srv, async (ctx) => {
  const topic = topicName('idle')
  const A = await joinPresence(ctx, topic, 'a')
  const B = await joinPresence(ctx, topic, 'b', { vsn: '1.0.0' })
  await sleep(2500) // five ping intervals with no application traffic
  await A.channel.send({ type: 'broadcast', event: 'still-here', payload: { ok: 1 } })
  await B.broadcasts.waitFor((m) => m.event === 'still-here', 5000, 'broadcast after idle period')
  assert.deepEqual(A.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
  assert.deepEqual(B.statuses.items.map((s) => s.status), ['SUBSCRIBED'])
})
