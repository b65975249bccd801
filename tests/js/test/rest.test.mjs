// REST broadcast endpoints as supabase-js 2.119.1 uses them
// (protocol.md §6.4, §6.5, §2.4; checklist 52–55, 57).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  startServer,
  scenario,
  topicName,
  sleep,
  bytesOf,
  assertNone,
  withTimeout,
  token,
  ANON_KEY,
} from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server?.stop()
})
const srv = () => server

const isEvent = (name) => (m) => m.event === name

scenario('channel.send() before subscribe falls back to the batch endpoint; v2 and v1 members receive it', srv, async (ctx) => {
  const topic = topicName('rest-batch')
  const v2 = await ctx.join(topic, { name: 'V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'V1' })

  const sender = ctx.client({ name: 'REST sender' })
  const ch = sender.channel(topic) // never subscribed → cannot push → REST fallback
  const res = await withTimeout(
    ch.send({ type: 'broadcast', event: 'via-batch', payload: { n: 1, s: 'ok' } }),
    12000,
    'send() REST fallback'
  )
  assert.ok(
    sender.__log.some((l) => l.includes('falling back to REST')),
    'test precondition: supabase-js must have used the REST fallback'
  )
  assert.equal(res, 'ok', 'send() via the batch endpoint must resolve "ok" (HTTP 2xx)')

  const a = await v2.broadcasts.waitFor(isEvent('via-batch'), 5000, 'via-batch on V2')
  assert.deepEqual(a.payload, { n: 1, s: 'ok' })
  assert.equal(a.type, 'broadcast')
  const b = await v1.broadcasts.waitFor(isEvent('via-batch'), 5000, 'via-batch on V1')
  assert.deepEqual(b.payload, { n: 1, s: 'ok' })
})

scenario('batch endpoint called exactly as supabase-js does (URL keeps the socket query) → 202, members receive', srv, async (ctx) => {
  const topic = topicName('rest-raw')
  const v2 = await ctx.join(topic, { name: 'V2' })
  // realtime-js: httpEndpointURL(socket endPointURL()) → http://host/realtime/v1/api/broadcast?apikey=…&vsn=2.0.0
  const url = v2.channel.broadcastEndpointURL
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/realtime\/v1\/api\/broadcast\?/)
  const resp = await withTimeout(
    fetch(url, {
      method: 'POST',
      headers: { apikey: ANON_KEY, 'Content-Type': 'application/json', Authorization: `Bearer ${ANON_KEY}` },
      body: JSON.stringify({
        messages: [
          { topic, event: 'raw-1', payload: { i: 1 }, private: false },
          { topic, event: 'raw-2', payload: { i: 2 }, private: false },
        ],
      }),
    }),
    10000,
    'POST batch'
  )
  const body = await resp.text()
  assert.equal(resp.status, 202, `batch POST status ${resp.status} body ${body}`)
  const m1 = await v2.broadcasts.waitFor(isEvent('raw-1'), 5000, 'raw-1')
  const m2 = await v2.broadcasts.waitFor(isEvent('raw-2'), 5000, 'raw-2')
  assert.deepEqual(m1.payload, { i: 1 })
  assert.deepEqual(m2.payload, { i: 2 })
})

scenario('batch endpoint: a message without event is rejected with 422', srv, async (ctx) => {
  const resp = await withTimeout(
    fetch(`${ctx.server.httpUrl}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { apikey: ANON_KEY, 'Content-Type': 'application/json' },
      body: JSON.stringify({ messages: [{ topic: topicName('rest-422'), payload: { a: 1 } }] }),
    }),
    10000,
    'POST batch 422'
  )
  const body = await resp.text()
  assert.equal(resp.status, 422, `status ${resp.status} body ${body}`)
})

scenario('httpSend() JSON to the single endpoint resolves {success:true}; v2 and v1 members receive it', srv, async (ctx) => {
  const topic = topicName('rest-single')
  const v2 = await ctx.join(topic, { name: 'V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'V1' })
  const sender = ctx.client({ name: 'httpSend sender' })
  const ch = sender.channel(topic)
  const res = await withTimeout(ch.httpSend('via-single', { hello: 'world', n: [1, 2] }), 12000, 'httpSend')
  assert.deepEqual(res, { success: true })
  const a = await v2.broadcasts.waitFor(isEvent('via-single'), 5000, 'via-single on V2')
  assert.deepEqual(a.payload, { hello: 'world', n: [1, 2] })
  assert.equal(a.type, 'broadcast')
  const b = await v1.broadcasts.waitFor(isEvent('via-single'), 5000, 'via-single on V1')
  assert.deepEqual(b.payload, { hello: 'world', n: [1, 2] })
})

scenario('httpSend() from a subscribed channel with an event name needing URL-encoding', srv, async (ctx) => {
  const topic = topicName('rest-enc')
  const v2 = await ctx.join(topic, { name: 'V2' })
  const sender = await ctx.join(topic, { name: 'sender (subscribed)' })
  const event = 'evt with space/ü'
  const res = await withTimeout(sender.channel.httpSend(event, { k: 'v' }), 12000, 'httpSend')
  assert.deepEqual(res, { success: true })
  const got = await v2.broadcasts.waitFor(isEvent(event), 5000, 'encoded event on V2')
  assert.deepEqual(got.payload, { k: 'v' })
})

scenario('httpSend() binary payload: vsn-2 members get the bytes, vsn-1 members get nothing', srv, async (ctx) => {
  const topic = topicName('rest-bin')
  const v2 = await ctx.join(topic, { name: 'V2' })
  const v1 = await ctx.join(topic, { vsn: '1.0.0', name: 'V1' })
  const sender = ctx.client({ name: 'httpSend sender' })
  const ch = sender.channel(topic)
  const bytes = [0, 1, 2, 250, 255]
  const res = await withTimeout(ch.httpSend('rest-bin', new Uint8Array(bytes)), 12000, 'httpSend binary')
  assert.deepEqual(res, { success: true })
  const got = await v2.broadcasts.waitFor(isEvent('rest-bin'), 5000, 'binary on V2')
  assert.ok(got.payload instanceof ArrayBuffer, `expected ArrayBuffer, got ${JSON.stringify(got.payload)}`)
  assert.deepEqual(bytesOf(got.payload), bytes)

  assert.deepEqual(await withTimeout(ch.httpSend('rest-after', { done: 1 }), 12000, 'httpSend sentinel'), { success: true })
  await v1.broadcasts.waitFor(isEvent('rest-after'), 5000, 'sentinel on V1')
  await sleep(200)
  assertNone(v1.broadcasts, isEvent('rest-bin'), 'vsn-1 member received a binary REST broadcast')
})

scenario('httpSend() with a token signed by another secret is rejected (not success, not 404)', srv, async (ctx) => {
  const bad = token({ role: 'anon', secret: 'some-other-secret-that-is-long-enough-000' })
  const sender = ctx.client({ name: 'bad-token sender', key: bad })
  const ch = sender.channel(topicName('rest-bad'))
  let outcome
  try {
    outcome = { resolved: await withTimeout(ch.httpSend('x', { a: 1 }), 12000, 'httpSend bad token') }
  } catch (e) {
    outcome = { rejected: e.message }
  }
  assert.ok(outcome.rejected, `httpSend with a bad token must reject, got ${JSON.stringify(outcome)}`)
  assert.doesNotMatch(outcome.rejected, /requires Realtime server v2\.97\.0/, 'endpoint answered 404')
  assert.match(outcome.rejected, /Unauthorized/i)
})
