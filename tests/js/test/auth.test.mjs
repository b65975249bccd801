// Tokens with unmodified supabase-js 2.119.1
// (protocol.md §1.2, §4.2 step 8, §8, §12.2, §12.4; checklist 5–7, 47, 48).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { startServer, scenario, topicName, sleep, withTimeout, token, signJwt, ANON_KEY, describe } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server?.stop()
})
const srv = () => server

const OTHER_SECRET = 'not-the-server-secret-but-long-enough-0123456789'
const isEvent = (name) => (m) => m.event === name

/** Find the phx_join pushes in a client's realtime-js log. */
const joinPushes = (client) => client.__log.filter((l) => / push realtime:\S+ phx_join /.test(l))

scenario('authenticated users via the accessToken option join and exchange broadcasts', srv, async (ctx) => {
  const topic = topicName('users')
  const t1 = token({ role: 'authenticated', sub: 'user-1', email: 'u1@example.com' })
  const t2 = token({ role: 'authenticated', sub: 'user-2', email: 'u2@example.com' })
  const u1 = await ctx.join(topic, { name: 'user-1', accessToken: async () => t1 })
  const u2 = await ctx.join(topic, { name: 'user-2', accessToken: async () => t2, vsn: '1.0.0' })
  assert.ok(joinPushes(u1.client).some((l) => l.includes(t1)), 'join must carry user-1 token')
  assert.ok(joinPushes(u2.client).some((l) => l.includes(t2)), 'join must carry user-2 token')
  await u1.channel.send({ type: 'broadcast', event: 'hi', payload: { from: 'user-1' } })
  assert.deepEqual((await u2.broadcasts.waitFor(isEvent('hi'), 5000, 'hi on user-2')).payload, { from: 'user-1' })
  await u2.channel.send({ type: 'broadcast', event: 'hi', payload: { from: 'user-2' } })
  assert.deepEqual((await u1.broadcasts.waitFor(isEvent('hi'), 5000, 'hi on user-1')).payload, { from: 'user-2' })
})

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: token refresh via realtime.setAuth(new token) keeps the channel working past the old token's expiry`, srv, async (ctx) => {
    const topic = topicName('refresh')
    let current = token({ role: 'authenticated', sub: 'refresher', expIn: 3 })
    const first = current
    const r = await ctx.join(topic, { vsn, name: 'refresher', accessToken: async () => current })
    assert.ok(joinPushes(r.client).some((l) => l.includes(first)), 'test precondition: join carried the short-lived token')
    const peer = await ctx.join(topic, { name: 'peer' })

    current = token({ role: 'authenticated', sub: 'refresher', expIn: 3600 })
    await withTimeout(r.client.realtime.setAuth(current), 5000, 'setAuth(new token)')
    await sleep(200)
    assert.ok(
      r.client.__log.some((l) => / push realtime:\S+ access_token /.test(l) && l.includes(current)),
      'test precondition: supabase-js pushed access_token with the new token'
    )

    // wait past the first token's expiry (+ margin for the server's check)
    await sleep(4500)
    assert.deepEqual(r.statuses.items.map((s) => s.status), ['SUBSCRIBED'], 'channel must stay subscribed')
    assert.deepEqual(r.system.filter((m) => m.status === 'error'), [], 'no system error after a valid refresh')

    await peer.channel.send({ type: 'broadcast', event: 'after-refresh', payload: { ok: true } })
    await r.broadcasts.waitFor(isEvent('after-refresh'), 5000, 'broadcast received after refresh')
    await r.channel.send({ type: 'broadcast', event: 'from-refreshed', payload: { ok: true } })
    await peer.broadcasts.waitFor(isEvent('from-refreshed'), 5000, 'broadcast sent after refresh')
  })

  scenario(`vsn ${vsn}: token expiry closes the channel (system "Token has expired…", CLOSED, no rejoin)`, srv, async (ctx) => {
    const topic = topicName('expiry')
    const short = token({ role: 'authenticated', sub: 'expiring', expIn: 2 })
    const t0 = Date.now()
    const r = await ctx.join(topic, { vsn, name: 'expiring', accessToken: async () => short })
    assert.ok(joinPushes(r.client).some((l) => l.includes(short)), 'test precondition: join carried the short-lived token')

    const closed = await r.statuses.waitFor((s) => s.status === 'CLOSED', 10000, 'CLOSED at token expiry')
    const sys = await r.system.waitFor((m) => m.status === 'error', 1000, 'system error')
    assert.match(sys.message, /^Token has expired/)
    assert.equal(sys.extension, 'system')
    assert.equal(sys.channel, topic)
    const elapsed = closed.at - t0
    assert.ok(elapsed >= 500 && elapsed <= 8000, `closed after ${elapsed} ms (token exp ≈ 2 s)`)
    // no automatic rejoin after a server-side close
    await sleep(2500)
    assert.deepEqual(r.statuses.items.map((s) => s.status), ['SUBSCRIBED', 'CLOSED'])
    assert.equal(joinPushes(r.client).length, 1, 'client must not rejoin after phx_close')
  })
}

scenario('join with an expired access_token → CHANNEL_ERROR "InvalidJWTToken: Token has expired…"', srv, async (ctx) => {
  const expired = token({ role: 'authenticated', sub: 'late', expIn: -30 })
  const client = ctx.client({ name: 'expired-join', accessToken: async () => expired })
  await withTimeout(client.realtime.setAuth(), 5000, 'setAuth()')
  const rec = ctx.channel(client, topicName('expired-join')).subscribe()
  const s = await rec.statuses.waitFor(() => true, 10000, 'first subscribe status')
  assert.equal(s.status, 'CHANNEL_ERROR', `got ${describe(s)}`)
  assert.match(s.error, /^InvalidJWTToken: Token has expired/)
  assert.match(s.cause?.reason ?? '', /^InvalidJWTToken: Token has expired/)
  await sleep(1500) // js retries the join after 1 s; it must keep failing
  assert.equal(rec.statuses.filter((x) => x.status === 'SUBSCRIBED').length, 0)
})

scenario('join with an access_token lacking role/exp → CHANNEL_ERROR "InvalidJWTToken: Fields `role` and `exp` are required in JWT"', srv, async (ctx) => {
  const noClaims = signJwt({ sub: 'nobody', iat: Math.floor(Date.now() / 1000) })
  const client = ctx.client({ name: 'no-claims', accessToken: async () => noClaims })
  await withTimeout(client.realtime.setAuth(), 5000, 'setAuth()')
  const rec = ctx.channel(client, topicName('no-claims')).subscribe()
  const s = await rec.statuses.waitFor(() => true, 10000, 'first subscribe status')
  assert.equal(s.status, 'CHANNEL_ERROR', `got ${describe(s)}`)
  assert.equal(s.error, 'InvalidJWTToken: Fields `role` and `exp` are required in JWT')
})

const badKeys = {
  'malformed apikey': 'not-a-jwt',
  'apikey signed with the wrong secret': token({ role: 'anon', secret: OTHER_SECRET }),
  'expired apikey': token({ role: 'anon', expIn: -60 }),
}
for (const [what, key] of Object.entries(badKeys)) {
  scenario(`${what}: channel never reaches SUBSCRIBED (CHANNEL_ERROR, reconnect attempts)`, srv, async (ctx) => {
    const client = ctx.client({ name: what, key })
    const rec = ctx.channel(client, topicName('badkey')).subscribe()
    await rec.statuses.waitFor((s) => s.status === 'CHANNEL_ERROR', 8000, 'CHANNEL_ERROR')
    await sleep(2500) // realtime-js keeps reconnecting (1 s, 2 s …); none may succeed
    assert.deepEqual(rec.statuses.filter((s) => s.status === 'SUBSCRIBED'), [])
    assert.ok(!client.__log.some((l) => / receive ok realtime:\S+ phx_reply /.test(l)), 'no join may be answered ok')
  })
}

/** Raw HTTP upgrade request; resolves { status, body } for a refused upgrade, or { status: 101 }. */
function rawUpgrade(port, query, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: `/realtime/v1/websocket${query}`,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': Buffer.from('0123456789abcdef').toString('base64'),
        ...headers,
      },
    })
    req.setTimeout(8000, () => req.destroy(new Error('upgrade request timed out')))
    req.on('upgrade', (res, socket) => {
      socket.destroy()
      resolve({ status: res.statusCode })
    })
    req.on('response', (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

scenario('WebSocket upgrade answers: 101 for a valid key, 401 + {"error": …} for bad keys, 403 for a bad vsn', srv, async (ctx) => {
  const port = ctx.server.port
  const ok = await rawUpgrade(port, `?apikey=${ANON_KEY}&vsn=2.0.0`)
  assert.equal(ok.status, 101)
  const cases = [
    ['?vsn=2.0.0', 401, 'API key is missing'],
    ['?apikey=not-a-jwt&vsn=2.0.0', 401, 'The token provided is not a valid JWT'],
    [`?apikey=${token({ role: 'anon', secret: OTHER_SECRET })}&vsn=2.0.0`, 401, 'Failed to validate JWT signature'],
    [`?apikey=${token({ role: 'anon', expIn: -60 })}&vsn=2.0.0`, 401, 'Token has expired'],
    [`?apikey=${signJwt({ sub: 'x' })}&vsn=2.0.0`, 401, 'Fields `role` and `exp` are required in JWT'],
  ]
  for (const [query, status, error] of cases) {
    const r = await withTimeout(rawUpgrade(port, query), 10000, `upgrade ${query}`)
    assert.equal(r.status, status, `upgrade ${query}: ${describe(r)}`)
    let parsed
    try {
      parsed = JSON.parse(r.body)
    } catch {
      parsed = r.body
    }
    assert.deepEqual(parsed, { error }, `upgrade ${query} body`)
  }
  const badVsn = await rawUpgrade(port, `?apikey=${ANON_KEY}&vsn=3.0.0`)
  assert.equal(badVsn.status, 403, `bad vsn: ${describe(badVsn)}`)
})
