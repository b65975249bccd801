// `realtime dev` end to end, as a newcomer runs it: the binary starts its own throwaway
// PostgreSQL, prints DATABASE_URL=/ANON_KEY=/SERVICE_ROLE_KEY=/USER_TOKEN= lines and a
// supabase-js snippet; the snippet, saved verbatim as a .mjs file and run on Node 22,
// inserts a row and receives it. The demo table's owner-only policy is checked with two
// more clients (another user gets nothing, service_role gets the row), keyed by tokens
// from `realtime token` (which signs with the same development secret). On SIGTERM the
// cluster is stopped and its directory removed.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFile } from 'node:child_process'
import { mkdtempSync, writeFileSync, rmSync, readdirSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createClient } from '@supabase/supabase-js'
import { REALTIME_BIN, JS_DIR, NODE_BIN, EventLog, withTimeout, sleep, describe } from './harness.mjs'

const SNIPPET_BEGIN = /^----- demo\.mjs: /
const SNIPPET_END = '----- end of demo.mjs -----'
const DEMO_USER = '00000000-0000-4000-8000-000000000001'

/** Starts `realtime dev`; resolves once the snippet's end marker is printed. */
function startDev(args = []) {
  const env = { ...process.env, HOST: '127.0.0.1', PORT: '0', RUST_LOG: 'info' }
  delete env.JWT_SECRET
  delete env.JWT_JWKS
  delete env.DATABASE_URL
  const child = spawn(REALTIME_BIN, ['dev', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const stderr = []
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (c) => {
    stderr.push(c)
    if (stderr.length > 300) stderr.shift()
  })
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const lines = []
  const ready = new Promise((resolve, reject) => {
    let partial = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop()
      lines.push(...parts)
      if (parts.includes(SNIPPET_END)) resolve()
    })
    exited.then((e) => reject(new Error(`realtime dev exited ${describe(e)} early; stdout ${describe(lines)}; stderr ${stderr.join('')}`)))
  })
  return { child, lines, ready, exited, stderr: () => stderr.join('') }
}

function run(bin, args, opts = {}) {
  return new Promise((resolve) => {
    execFile(bin, args, { encoding: 'utf8', timeout: 30000, ...opts }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code ?? 1 : 0, stdout, stderr })
    )
  })
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

/** A supabase-js client subscribed to INSERTs on public.todos, ready once the server says so. */
async function todosListener(httpUrl, key, accessToken, label) {
  const client = createClient(httpUrl, key, { auth: { persistSession: false, autoRefreshToken: false } })
  if (accessToken) await client.realtime.setAuth(accessToken)
  const rows = new EventLog(`${label} rows`)
  const system = new EventLog(`${label} system`)
  client
    .channel(`dev-test-${label}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, ({ new: row }) => rows.add(row))
    .on('system', {}, (m) => system.add(m))
    .subscribe()
  const sys = await system.waitFor((m) => m?.extension === 'postgres_changes', 15000, `${label}: Subscribed to PostgreSQL`)
  assert.equal(sys.status, 'ok', `${label}: ${describe(sys)}`)
  return { client, rows }
}

test('realtime dev: the printed snippet inserts a row and receives it; the cluster is gone on exit', { timeout: 120000 }, async () => {
  const dev = startDev()
  let demoDir
  const clients = []
  try {
    await withTimeout(dev.ready, 60000, 'realtime dev prints its banner')
    const out = dev.lines
    const m = /^realtime-rs listening on 127\.0\.0\.1:(\d+)$/.exec(out[0])
    assert.ok(m, `first line is the listening line: ${describe(out.slice(0, 3))}`)
    const httpUrl = `http://127.0.0.1:${m[1]}`
    const value = (name) => {
      const line = out.find((l) => l.startsWith(`${name}=`))
      assert.ok(line, `a ${name}= line in ${describe(out)}`)
      return line.slice(name.length + 1)
    }
    const databaseUrl = value('DATABASE_URL')
    const serviceKey = value('SERVICE_ROLE_KEY')
    assert.ok(value('ANON_KEY').split('.').length === 3)
    const dbPort = Number(new URL(databaseUrl).port)
    assert.ok(await portOpen(dbPort), 'the development PostgreSQL listens')

    // Another user (token from `realtime token`, same development secret) and service_role.
    const other = await run(REALTIME_BIN, ['token', '--role', 'authenticated', '--sub', '00000000-0000-4000-8000-000000000002'], {
      env: { PATH: process.env.PATH },
    })
    assert.equal(other.code, 0, other.stderr)
    const stranger = await todosListener(httpUrl, value('ANON_KEY'), other.stdout.trim(), 'stranger')
    const service = await todosListener(httpUrl, serviceKey, null, 'service_role')
    clients.push(stranger.client, service.client)

    // The snippet, verbatim, as demo.mjs next to node_modules, in a CommonJS package
    // (what `npm init -y` writes): the .mjs name is what makes `import` work.
    const start = out.findIndex((l) => SNIPPET_BEGIN.test(l))
    const end = out.indexOf(SNIPPET_END)
    assert.ok(start >= 0 && end > start, 'snippet markers')
    demoDir = mkdtempSync(path.join(JS_DIR, '.dev-demo-'))
    writeFileSync(path.join(demoDir, 'package.json'), '{"name":"demo","version":"1.0.0","type":"commonjs"}\n')
    writeFileSync(path.join(demoDir, 'demo.mjs'), out.slice(start + 1, end).join('\n') + '\n')
    const demo = await run(NODE_BIN, ['demo.mjs'], { cwd: demoDir })
    assert.equal(demo.code, 0, `demo.mjs exits 0 after receiving its row; stdout ${demo.stdout} stderr ${demo.stderr}`)
    const received = demo.stdout.split('\n').find((l) => l.startsWith('received '))
    assert.ok(received, `demo.mjs prints the row: ${demo.stdout}`)
    const row = JSON.parse(received.slice('received '.length))
    assert.equal(row.task, 'try realtime-rs')
    assert.equal(row.owner, DEMO_USER)

    const seen = await service.rows.waitFor((r) => r.task === 'try realtime-rs', 10000, 'service_role gets the row')
    assert.equal(seen.owner, DEMO_USER)
    await sleep(1000)
    assert.deepEqual(stranger.rows.items, [], 'another user never sees the demo user\'s row')
  } catch (e) {
    e.message += `\n--- realtime dev stderr:\n${dev.stderr().slice(-6000)}`
    throw e
  } finally {
    for (const c of clients) {
      try { await withTimeout(c.removeAllChannels(), 3000, 'removeAllChannels') } catch {}
      c.realtime.disconnect()
    }
    if (demoDir) rmSync(demoDir, { recursive: true, force: true })
  }

  const dbPort = Number(new URL(dev.lines.find((l) => l.startsWith('DATABASE_URL=')).slice(13)).port)
  dev.child.kill('SIGTERM')
  const exit = await withTimeout(dev.exited, 20000, 'realtime dev exits on SIGTERM')
  assert.equal(exit.code, 0, `exit ${describe(exit)}; stderr ${dev.stderr().slice(-3000)}`)
  assert.equal(await portOpen(dbPort), false, 'the development PostgreSQL is stopped')
  const left = readdirSync(os.tmpdir()).filter((n) => n.startsWith(`realtime-dev-${dev.child.pid}-`))
  assert.deepEqual(left, [], 'its directory is removed')
})
