// REPLAY_PUBLIC=true (beyond Supabase): the README's supabase-js recipe for getting the
// public broadcasts missed while a socket was down, on an automatic reconnect.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, sleep, waitUntil } from './harness.mjs'

let server
before(async () => {
  server = await startServer({ env: { REPLAY_PUBLIC: 'true' } })
})
after(async () => {
  await server?.stop()
})
const srv = () => server

scenario('a reconnecting client replays what it missed, each message once', srv, async (ctx) => {
  const topic = topicName('timeline')
  const sender = await ctx.join(topic, { name: 'sender' })

  // The README recipe, verbatim in spirit: a `since` getter read at every (re)join.
  const client = ctx.client({ name: 'follower' })
  let lastSeen = Date.now()
  const channel = client.channel(topic)
  channel.params.config.broadcast.replay = {
    get since() {
      return lastSeen - 1000
    },
    limit: 25,
  }
  const seen = new Set()
  const rendered = []
  const replayedFlags = []
  let subscribed = 0
  channel
    .on('broadcast', { event: '*' }, (msg) => {
      lastSeen = Date.now()
      replayedFlags.push(Boolean(msg.meta?.replayed))
      if (msg.meta?.id && seen.has(msg.meta.id)) return
      if (msg.meta?.id) seen.add(msg.meta.id)
      rendered.push(msg.payload.n)
    })
    .subscribe((status) => {
      if (status === 'SUBSCRIBED') subscribed += 1
    })
  await waitUntil(() => subscribed === 1, 10000, 'first SUBSCRIBED')

  assert.equal(await sender.channel.send({ type: 'broadcast', event: 'step', payload: { n: 1 } }), 'ok')
  await waitUntil(() => rendered.length === 1, 5000, 'message 1 live')
  assert.equal(replayedFlags[0], false, 'a live message is not flagged replayed')

  // The network drops (not a clean disconnect: realtime-js reconnects by itself).
  client.realtime.socketAdapter.socket.conn.close()
  await sleep(100)
  for (const n of [2, 3]) {
    assert.equal(await sender.channel.send({ type: 'broadcast', event: 'step', payload: { n } }), 'ok')
  }

  await waitUntil(() => subscribed === 2, 15000, 'SUBSCRIBED again after the reconnect')
  await waitUntil(() => rendered.length === 3, 5000, 'messages 2 and 3 replayed')
  assert.equal(await sender.channel.send({ type: 'broadcast', event: 'step', payload: { n: 4 } }), 'ok')
  await waitUntil(() => rendered.length === 4, 5000, 'message 4 live')
  await sleep(300)
  assert.deepEqual(rendered, [1, 2, 3, 4], 'every message once, in order')
  assert.ok(replayedFlags.filter(Boolean).length >= 2, 'messages 2 and 3 came from replay')
})
