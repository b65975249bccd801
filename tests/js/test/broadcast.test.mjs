// Broadcast over the WebSocket with unmodified supabase-js 2.119.1
// (protocol.md §2.3, §2.4, §6.1, §6.2; checklist 21–25, 27).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, bytesOf, assertNone, withTimeout } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server?.stop()
})
const srv = () => server

const isEvent = (name) => (m) => m.event === name

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: broadcast reaches the other member, self:false sender does not receive it`, srv, async (ctx) => {
    const topic = topicName('bc')
    const a = await ctx.join(topic, { vsn, name: 'A' })
    const b = await ctx.join(topic, { vsn, name: 'B' })

    const res = await a.channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, y: 'é' } })
    assert.equal(res, 'ok')
    const got = await b.broadcasts.waitFor(isEvent('cursor'), 5000, 'cursor on B')
    assert.equal(got.type, 'broadcast')
    assert.deepEqual(got.payload, { x: 1, y: 'é' })

    // sentinel from B to A: anything A would have got of its own message arrives before it
    await b.channel.send({ type: 'broadcast', event: 'sentinel', payload: { from: 'B' } })
    await a.broadcasts.waitFor(isEvent('sentinel'), 5000, 'sentinel on A')
    await sleep(200)
    assertNone(a.broadcasts, isEvent('cursor'), 'sender A (self:false) received its own broadcast')
    assertNone(b.broadcasts, isEvent('sentinel'), 'sender B (self:false) received its own broadcast')
  })

  scenario(`vsn ${vsn}: self:true sender receives its own broadcast (and so do others)`, srv, async (ctx) => {
    const topic = topicName('self')
    const a = await ctx.join(topic, { vsn, name: 'A', config: { broadcast: { self: true } } })
    const b = await ctx.join(topic, { vsn, name: 'B' })
    await a.channel.send({ type: 'broadcast', event: 'echo', payload: { n: 42 } })
    const own = await a.broadcasts.waitFor(isEvent('echo'), 5000, 'own echo on A')
    assert.deepEqual(own.payload, { n: 42 })
    assert.equal(own.type, 'broadcast')
    const other = await b.broadcasts.waitFor(isEvent('echo'), 5000, 'echo on B')
    assert.deepEqual(other.payload, { n: 42 })
    await sleep(200)
    assert.equal(a.broadcasts.filter(isEvent('echo')).length, 1, 'self:true sender must receive exactly one copy')
  })

  scenario(`vsn ${vsn}: ack:true — send() resolves "ok" from the server reply`, srv, async (ctx) => {
    const topic = topicName('ack')
    const a = await ctx.join(topic, { vsn, name: 'A', config: { broadcast: { ack: true } } })
    const b = await ctx.join(topic, { vsn, name: 'B' })
    const t0 = Date.now()
    const res = await withTimeout(
      a.channel.send({ type: 'broadcast', event: 'acked', payload: { ok: true } }),
      12000,
      'send with ack'
    )
    assert.equal(res, 'ok', `send() with ack resolved ${JSON.stringify(res)} after ${Date.now() - t0} ms`)
    assert.ok(Date.now() - t0 < 5000, 'ack reply should come promptly')
    const got = await b.broadcasts.waitFor(isEvent('acked'), 5000, 'acked broadcast on B')
    assert.deepEqual(got.payload, { ok: true })
    // a second acked send on the same channel
    assert.equal(await withTimeout(a.channel.send({ type: 'broadcast', event: 'acked', payload: { n: 2 } }), 12000, 'second ack'), 'ok')
  })
}

scenario('binary ArrayBuffer payload: delivered to vsn-2 members byte-exact, NOT to a vsn-1 member', srv, async (ctx) => {
  const topic = topicName('bin')
  const a = await ctx.join(topic, { name: 'A(v2 sender)' })
  const b = await ctx.join(topic, { name: 'B(v2)' })
  const c = await ctx.join(topic, { vsn: '1.0.0', name: 'C(v1)' })

  const bytes = [1, 2, 3, 255, 0, 128]
  const res = await a.channel.send({ type: 'broadcast', event: 'bin', payload: new Uint8Array(bytes).buffer })
  assert.equal(res, 'ok')
  const got = await b.broadcasts.waitFor(isEvent('bin'), 5000, 'binary broadcast on B')
  assert.ok(got.payload instanceof ArrayBuffer, `expected an ArrayBuffer payload, got ${typeof got.payload}: ${JSON.stringify(got.payload)}`)
  assert.deepEqual(bytesOf(got.payload), bytes)
  assert.equal(got.type, 'broadcast')

  // JSON sentinel after the binary one: C must get the sentinel but never the binary message
  await a.channel.send({ type: 'broadcast', event: 'after-bin', payload: { done: true } })
  await c.broadcasts.waitFor(isEvent('after-bin'), 5000, 'JSON sentinel on C(v1)')
  await b.broadcasts.waitFor(isEvent('after-bin'), 5000, 'JSON sentinel on B(v2)')
  await sleep(200)
  assertNone(c.broadcasts, isEvent('bin'), 'vsn-1 member received a binary broadcast')
  assertNone(a.broadcasts, isEvent('bin'), 'self:false sender received its binary broadcast')
})

scenario('mixed vsn: a vsn-1 and a vsn-2 client exchange JSON broadcasts both ways', srv, async (ctx) => {
  const topic = topicName('mixed')
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'V1' })
  const v2 = await ctx.join(topic, { vsn: '2.0.0', name: 'V2' })

  await v1.channel.send({ type: 'broadcast', event: 'from-v1', payload: { a: 1, nested: { s: 'x' }, list: [1, 2] } })
  const atV2 = await v2.broadcasts.waitFor(isEvent('from-v1'), 5000, 'from-v1 on V2')
  assert.equal(atV2.type, 'broadcast')
  assert.deepEqual(atV2.payload, { a: 1, nested: { s: 'x' }, list: [1, 2] })

  await v2.channel.send({ type: 'broadcast', event: 'from-v2', payload: { b: 2, u: 'ünï' } })
  const atV1 = await v1.broadcasts.waitFor(isEvent('from-v2'), 5000, 'from-v2 on V1')
  assert.equal(atV1.type, 'broadcast')
  assert.deepEqual(atV1.payload, { b: 2, u: 'ünï' })

  await sleep(200)
  assertNone(v1.broadcasts, isEvent('from-v1'), 'V1 sender got its own message')
  assertNone(v2.broadcasts, isEvent('from-v2'), 'V2 sender got its own message')
})

scenario('topic isolation: a broadcast on one topic is not delivered to another topic', srv, async (ctx) => {
  const t1 = topicName('iso')
  const t2 = topicName('iso')
  const client = ctx.client({ name: 'multi' })
  const a = await ctx.join(t1, { name: 'A' })
  const other1 = ctx.channel(client, t1).subscribe()
  const other2 = ctx.channel(client, t2).subscribe()
  await other1.subscribed()
  await other2.subscribed()

  await a.channel.send({ type: 'broadcast', event: 'only-t1', payload: { t: 1 } })
  await other1.broadcasts.waitFor(isEvent('only-t1'), 5000, 'only-t1 on t1')
  await sleep(300)
  assertNone(other2.broadcasts, isEvent('only-t1'), 'message leaked to another topic')
})
