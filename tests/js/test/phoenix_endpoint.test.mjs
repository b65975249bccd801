// The README says a Phoenix JS client's endpoint is `…/realtime/v1` or `…/socket`
// (Phoenix appends `/websocket` itself). Checked with the Phoenix client realtime-js
// ships (@supabase/phoenix, a dependency of supabase-js; no package added): two sockets,
// one per endpoint, join a topic, and a broadcast from one reaches the other.
import { before, after, test } from 'node:test'
import assert from 'node:assert/strict'
import { Socket } from '@supabase/phoenix'
import { startServer, ANON_KEY, topicName, EventLog } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server?.stop()
})

function join(endpoint, topic) {
  const socket = new Socket(endpoint, { params: { apikey: ANON_KEY } })
  socket.connect()
  const channel = socket.channel(`realtime:${topic}`, { config: { broadcast: { self: false } } })
  const broadcasts = new EventLog(`${endpoint} broadcasts`)
  channel.on('broadcast', (msg) => broadcasts.add(msg))
  const joined = new Promise((resolve, reject) => {
    channel
      .join()
      .receive('ok', resolve)
      .receive('error', (e) => reject(new Error(`join via ${endpoint}: ${JSON.stringify(e)}`)))
      .receive('timeout', () => reject(new Error(`join via ${endpoint} timed out`)))
  })
  return { socket, channel, broadcasts, joined }
}

test('the Phoenix JS client connects with …/realtime/v1 and …/socket as its endpoint', { timeout: 30000 }, async () => {
  const topic = topicName('phoenix')
  const base = `ws://127.0.0.1:${server.port}`
  const a = join(`${base}/realtime/v1`, topic)
  const b = join(`${base}/socket`, topic)
  try {
    await Promise.all([a.joined, b.joined])
    a.channel.push('broadcast', { type: 'broadcast', event: 'hello', payload: { from: 'realtime/v1' } })
    const got = await b.broadcasts.waitFor((m) => m.event === 'hello', 5000, 'the broadcast via /socket')
    assert.deepEqual(got.payload, { from: 'realtime/v1' })
  } finally {
    a.socket.disconnect()
    b.socket.disconnect()
  }
})
