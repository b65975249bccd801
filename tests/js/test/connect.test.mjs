// Connection + join basics with unmodified supabase-js 2.119.1
// (protocol.md §1.1, §1.3, §4, §12.1, §12.4; checklist 1, 2, 10, 13, 19).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, EventLog, withTimeout } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server?.stop()
})
const srv = () => server

scenario('vsn 2.0.0 (default): channel reaches SUBSCRIBED', srv, async (ctx) => {
  const client = ctx.client()
  const url = new URL(client.realtime.endpointURL())
  assert.equal(url.pathname, '/realtime/v1/websocket')
  assert.equal(url.searchParams.get('vsn'), '2.0.0')
  const rec = ctx.channel(client, topicName()).subscribe()
  await rec.subscribed()
  assert.equal(rec.channel.state, 'joined')
})

scenario('vsn 1.0.0 (realtime: { vsn: "1.0.0" }): channel reaches SUBSCRIBED', srv, async (ctx) => {
  const client = ctx.client({ vsn: '1.0.0' })
  const url = new URL(client.realtime.endpointURL())
  assert.equal(url.searchParams.get('vsn'), '1.0.0')
  const rec = ctx.channel(client, topicName()).subscribe()
  await rec.subscribed()
  assert.equal(rec.channel.state, 'joined')
})

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: removeChannel resolves "ok" and reports CLOSED`, srv, async (ctx) => {
    const client = ctx.client({ vsn })
    const rec = ctx.channel(client, topicName()).subscribe()
    await rec.subscribed()
    const res = await withTimeout(client.removeChannel(rec.channel), 10000, 'removeChannel')
    assert.equal(res, 'ok')
    await rec.statuses.waitFor((s) => s.status === 'CLOSED', 5000, 'CLOSED')
    assert.equal(client.getChannels().length, 0)
  })
}

scenario('several channels on one connection all reach SUBSCRIBED', srv, async (ctx) => {
  const client = ctx.client()
  const recs = [1, 2, 3].map(() => ctx.channel(client, topicName('multi')).subscribe())
  await Promise.all(recs.map((r) => r.subscribed()))
})

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: heartbeats are answered (heartbeatCallback reports "ok", never "timeout")`, srv, async (ctx) => {
    const beats = new EventLog('heartbeat statuses')
    const client = ctx.client({
      vsn,
      realtime: { heartbeatIntervalMs: 500, heartbeatCallback: (status) => beats.add(status) },
    })
    const rec = ctx.channel(client, topicName('hb')).subscribe()
    await rec.subscribed()
    await beats.waitFor((s) => s === 'ok', 5000, 'first heartbeat ok')
    // wait for a few more rounds
    const deadline = Date.now() + 8000
    while (beats.filter((s) => s === 'ok').length < 3) {
      if (Date.now() > deadline) break
      await new Promise((r) => setTimeout(r, 50))
    }
    assert.ok(beats.filter((s) => s === 'ok').length >= 3, `heartbeat statuses: ${JSON.stringify(beats.items)}`)
    assert.deepEqual(beats.filter((s) => s === 'timeout' || s === 'error'), [])
    assert.deepEqual(
      rec.statuses.items.map((s) => s.status),
      ['SUBSCRIBED'],
      'channel status must not change while heartbeating'
    )
  })
}
