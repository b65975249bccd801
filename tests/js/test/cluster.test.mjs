// Three realtime-rs nodes on one engine (redis-server, then nats-server), driven by
// unmodified supabase-js 2.119.1: clients on different nodes see one server (issue 11:
// Broadcast and Presence).
import { before, after, suite, test } from 'node:test'
import { existsSync } from 'node:fs'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import net from 'node:net'
import { startServer, Ctx, topicName, withTimeout, waitUntil, describe } from './harness.mjs'

async function freePort() {
  return await new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Starts `redis-server` or `nats-server` on a free loopback port: { url, child }. */
async function startEngine(engine) {
  const port = await freePort()
  const [bin, args, url] =
    engine === 'redis'
      ? [process.env.REDIS_SERVER ?? 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], `redis://127.0.0.1:${port}`]
      : [
          process.env.NATS_SERVER ?? (existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server'),
          ['-a', '127.0.0.1', '-p', String(port)],
          `nats://127.0.0.1:${port}`,
        ]
  const child = spawn(bin, args, { stdio: 'ignore' })
  await new Promise((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`cannot start ${bin} (install Debian's ${engine}-server): ${e.message}`)))
    const deadline = Date.now() + 10000
    const probe = () => {
      const sock = net.connect(port, '127.0.0.1')
      sock.once('connect', () => {
        sock.destroy()
        resolve()
      })
      sock.once('error', () => {
        sock.destroy()
        if (Date.now() > deadline) reject(new Error(`${bin} did not listen within 10 s`))
        else setTimeout(probe, 20)
      })
    }
    probe()
  })
  return { url, child }
}

/** Runs fn with one supabase-js context per node; every client is torn down after. */
function clusterScenario(nodes, name, fn) {
  return test(name, { timeout: 60000 }, async () => {
    const ctxs = nodes.map((n) => new Ctx(n))
    try {
      await fn(ctxs)
    } catch (err) {
      err.message = `${err.message}\n\n===== diagnostics =====\n${ctxs.map((c) => c.diagnostics()).join('\n')}`
      throw err
    } finally {
      for (const c of ctxs) await c.cleanup()
    }
  })
}

for (const engine of ['redis', 'nats']) {
  suite(`cluster on ${engine}`, () => {
    let server
    const nodes = []
    before(async () => {
      server = await startEngine(engine)
      for (const name of ['n1', 'n2', 'n3']) {
        nodes.push(await startServer({ env: { CLUSTER_URL: server.url, NODE_ID: name } }))
      }
      // Let every node hear the others' heartbeats (one per second).
      await new Promise((r) => setTimeout(r, 1200))
    })
    after(async () => {
      for (const n of nodes) await n.stop()
      server?.child.kill('SIGKILL')
    })

    clusterScenario(nodes, 'a broadcast sent on one node reaches members on every node, once; httpSend too', async ([n1, n2, n3]) => {
      const topic = topicName('cluster')
      const sender = await n1.join(topic, { name: 'sender@n1' })
      const onN2 = await n2.join(topic, { name: 'member@n2' })
      const onN3 = await n3.join(topic, { name: 'member@n3 (vsn 1)', vsn: '1.0.0' })
      for (let i = 0; i < 20; i++) {
        assert.equal(await sender.channel.send({ type: 'broadcast', event: 'step', payload: { i } }), 'ok')
      }
      for (const rec of [onN2, onN3]) {
        await rec.broadcasts.waitFor(() => rec.broadcasts.items.length >= 20, 5000, 'all 20 broadcasts')
        assert.deepEqual(
          rec.broadcasts.items.map((m) => m.payload.i),
          [...Array(20).keys()],
          'in send order, once each'
        )
      }
      assert.equal(sender.broadcasts.items.length, 0, 'self: false: the sender gets nothing back')

      const res = await withTimeout(onN3.channel.httpSend('from-n3', { via: 'rest' }), 5000, 'httpSend on n3')
      assert.equal(res.success, true, describe(res))
      await sender.broadcasts.waitFor((m) => m.event === 'from-n3', 5000, 'httpSend from n3 reaches n1')
      await onN2.broadcasts.waitFor((m) => m.event === 'from-n3', 5000, 'httpSend from n3 reaches n2')
    })

    clusterScenario(nodes, 'presence is one state across nodes, and a leave on one node shows on the others', async ([n1, n2, n3]) => {
      const topic = topicName('cluster-presence')
      const keys = (rec) => Object.keys(rec.channel.presenceState()).sort().join()
      const alice = await n1.join(topic, { name: 'alice@n1', presence: true, config: { presence: { key: 'alice' } } })
      assert.equal(await alice.channel.track({ name: 'Alice' }), 'ok')
      const bob = await n2.join(topic, { name: 'bob@n2', presence: true, config: { presence: { key: 'bob' } } })
      assert.equal(await bob.channel.track({ name: 'Bob' }), 'ok')
      await waitUntil(() => keys(alice) === 'alice,bob', 5000, `alice sees bob (${describe(alice.channel.presenceState())})`)
      await waitUntil(() => keys(bob) === 'alice,bob', 5000, `bob sees alice (${describe(bob.channel.presenceState())})`)

      const carol = await n3.join(topic, { name: 'carol@n3', presence: true, config: { presence: { key: 'carol' } } })
      await waitUntil(() => keys(carol) === 'alice,bob', 5000, `carol's first sync holds everyone (${describe(carol.channel.presenceState())})`)
      assert.equal(carol.channel.presenceState().alice[0].name, 'Alice')

      assert.equal(await bob.channel.untrack(), 'ok')
      await alice.presence.waitFor((e) => e.event === 'leave' && e.key === 'bob', 5000, 'alice sees bob leave')
      await waitUntil(() => keys(carol) === 'alice', 5000, 'carol sees bob leave')
    })
  })
}
