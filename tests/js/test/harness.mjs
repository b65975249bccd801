// Test harness for the supabase-js compatibility suite.
//
// * startServer(): spawns the real `realtime` binary (REALTIME_BIN, default
//   ../../target/release/realtime relative to tests/js) on PORT=0 with a fixed
//   JWT_SECRET, waits for `realtime-rs listening on 127.0.0.1:<port>` on stdout
//   and keeps the tail of stderr for diagnostics.
// * token()/signJwt(): HS256 JWTs minted with node:crypto.
// * scenario(): wraps a node:test test so that every client it creates is torn
//   down afterwards and, on failure, the error message carries the frames each
//   client pushed/received (via the public `logger` option of realtime-js) and
//   the server's stderr tail.
// * EventLog: bounded waits ("wait until an item matching X arrives, else fail
//   after N ms, listing what was seen").
//
// Everything here uses only public supabase-js API: createClient, channel(),
// on(), subscribe(), send(), httpSend(), track(), untrack(), removeChannel(),
// realtime.setAuth(), the `accessToken` option and `realtime` client options.

import { spawn } from 'node:child_process'
import { createHmac } from 'node:crypto'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { createClient } from '@supabase/supabase-js'

export const JWT_SECRET = 'realtime-rs-test-secret-0123456789-abcdefghijklmnop'

const here = path.dirname(fileURLToPath(import.meta.url))
export const JS_DIR = path.resolve(here, '..')
export const REALTIME_BIN = process.env.REALTIME_BIN
  ? path.resolve(process.env.REALTIME_BIN)
  : path.resolve(JS_DIR, '../../target/release/realtime')

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

let uniq = 0
/** A topic name unique to this process run. */
export function topicName(prefix = 'room') {
  uniq += 1
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${uniq}`
}

// ---------------------------------------------------------------- JWTs

export function signJwt(claims, secret = JWT_SECRET, header = { alg: 'HS256', typ: 'JWT' }) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const signingInput = `${enc(header)}.${enc(claims)}`
  const sig = createHmac('sha256', secret).update(signingInput).digest('base64url')
  return `${signingInput}.${sig}`
}

/**
 * token({ role, expIn, secret, ...claims }) — HS256 JWT with `role`, `iat`, `exp`.
 * expIn is in seconds relative to now (negative = already expired).
 */
export function token({ role = 'anon', expIn = 3600, secret = JWT_SECRET, ...extra } = {}) {
  const now = Math.floor(Date.now() / 1000)
  return signJwt({ iss: 'supabase', role, iat: now, exp: now + expIn, ...extra }, secret)
}

export const ANON_KEY = token({ role: 'anon', expIn: 24 * 3600 })

// ---------------------------------------------------------------- bounded waits

export class EventLog {
  constructor(name = 'events') {
    this.name = name
    this.items = []
    this.waiters = []
  }

  add(item) {
    this.items.push(item)
    for (const w of [...this.waiters]) {
      if (w.pred(item)) {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        clearTimeout(w.timer)
        w.resolve(item)
      }
    }
  }

  /** Items matching pred seen so far. */
  filter(pred = () => true) {
    return this.items.filter(pred)
  }

  /**
   * Resolves with the first item (already seen or future) matching pred;
   * rejects after timeoutMs listing everything seen.
   */
  waitFor(pred, timeoutMs, label = 'a matching event') {
    const found = this.items.find(pred)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const w = { pred, resolve }
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${label} on ${this.name}; seen: ${describe(this.items)}`
          )
        )
      }, timeoutMs)
      this.waiters.push(w)
    })
  }
}

/** Poll a condition until true; fails after timeoutMs. */
export async function waitUntil(cond, timeoutMs, label, intervalMs = 25) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let last
    try {
      if (await cond()) return
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting until ${label}${last ? ` (last error: ${last.message})` : ''}`)
    }
    await sleep(intervalMs)
  }
}

/** Race a promise against a timeout that fails the test. */
export function withTimeout(promise, timeoutMs, label) {
  let timer
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${label}`)), timeoutMs)
  })
  return Promise.race([promise, t]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------- formatting

function replacer(_k, v) {
  if (v instanceof ArrayBuffer) return { __arraybuffer_hex: Buffer.from(v).toString('hex') }
  if (ArrayBuffer.isView(v)) return { __bytes_hex: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') }
  if (v instanceof Error) return { error: v.message, cause: v.cause }
  return v
}

export function describe(x, max = 4000) {
  let s
  try {
    s = JSON.stringify(x, replacer)
  } catch {
    s = String(x)
  }
  if (s && s.length > max) s = s.slice(0, max) + `…(${s.length - max} more chars)`
  return s
}

export function bytesOf(buf) {
  if (buf instanceof ArrayBuffer) return [...new Uint8Array(buf)]
  if (ArrayBuffer.isView(buf)) return [...new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)]
  return null
}

// ---------------------------------------------------------------- server

/**
 * Start the realtime binary. Resolves to
 * { port, httpUrl, wsUrl, child, stderrTail(), stop() }.
 */
export async function startServer({ env = {}, timeoutMs = 20000 } = {}) {
  const child = spawn(REALTIME_BIN, [], {
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: '0',
      JWT_SECRET,
      CONNECT_ERROR_BACKOFF_MS: '0',
      CHANNEL_ERROR_BACKOFF_MS: '0',
      REPLICATION_START_DELAY_MS: '0',
      RUST_LOG: process.env.RUST_LOG ?? 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })

  const stderrLines = []
  let stderrPartial = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    const parts = (stderrPartial + chunk).split('\n')
    stderrPartial = parts.pop()
    for (const l of parts) {
      stderrLines.push(l)
      if (stderrLines.length > 400) stderrLines.shift()
    }
  })
  const stderrTail = (n = 60) => [...stderrLines, stderrPartial].filter(Boolean).slice(-n).join('\n')

  let exited = null
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal }
      resolve(exited)
    })
  })

  const port = await new Promise((resolve, reject) => {
    let buf = ''
    let firstLineSeen = false
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`server did not print its listening line within ${timeoutMs} ms (bin ${REALTIME_BIN}); stdout so far: ${JSON.stringify(buf)}\nstderr:\n${stderrTail()}`))
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(new Error(`could not start ${REALTIME_BIN}: ${err.message}`))
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`server exited (code ${code}, signal ${signal}) before listening; stdout: ${JSON.stringify(buf)}\nstderr:\n${stderrTail()}`))
    })
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      if (firstLineSeen) return
      buf += chunk
      const nl = buf.indexOf('\n')
      if (nl === -1) return
      firstLineSeen = true
      clearTimeout(timer)
      const line = buf.slice(0, nl).replace(/\r$/, '')
      const m = /^realtime-rs listening on 127\.0\.0\.1:(\d+)$/.exec(line)
      if (!m) {
        child.kill('SIGKILL')
        reject(new Error(`unexpected first stdout line from server: ${JSON.stringify(line)}`))
        return
      }
      resolve(Number(m[1]))
    })
  })
  // keep draining stdout so the child never blocks on a full pipe
  child.stdout.resume()

  async function stop() {
    if (exited) return exited
    child.kill('SIGTERM')
    const r = await Promise.race([exitPromise, sleep(5000).then(() => null)])
    if (r) return r
    child.kill('SIGKILL')
    return await Promise.race([exitPromise, sleep(5000).then(() => ({ code: null, signal: 'unreaped' }))])
  }

  return {
    port,
    httpUrl: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/realtime/v1/websocket`,
    child,
    stderrTail,
    isRunning: () => exited === null,
    stop,
  }
}

// ---------------------------------------------------------------- clients

const SUPABASE_AUTH_OFF = { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false }

/**
 * Per-test context: creates supabase-js clients, remembers them for teardown
 * and diagnostics.
 */
export class Ctx {
  constructor(server) {
    this.server = server
    this.clients = []
    this.children = []
  }

  /**
   * A supabase-js client. opts:
   *   key         – apikey (default ANON_KEY)
   *   vsn         – '1.0.0' | '2.0.0' (default: realtime-js default, 2.0.0)
   *   accessToken – async () => token (supabase-js `accessToken` option)
   *   realtime    – extra RealtimeClient options
   *   name        – label for diagnostics
   */
  client({ key = ANON_KEY, vsn, accessToken, realtime = {}, name } = {}) {
    const log = []
    const label = name ?? `client${this.clients.length + 1}${vsn ? `(vsn ${vsn})` : ''}`
    const options = {
      auth: SUPABASE_AUTH_OFF,
      realtime: {
        ...(vsn ? { vsn } : {}),
        logger: (kind, msg, data) => {
          log.push(`${new Date().toISOString().slice(11, 23)} ${kind} ${msg} ${describe(data, 2000) ?? ''}`)
          if (log.length > 300) log.shift()
        },
        ...realtime,
      },
    }
    if (accessToken) options.accessToken = accessToken
    const client = createClient(this.server.httpUrl, key, options)
    const entry = { label, client, log }
    this.clients.push(entry)
    client.__log = log
    client.__label = label
    return client
  }

  /**
   * Create a channel with recorders attached. Does not subscribe.
   * opts.config → channel config; opts.presence → attach presence listeners;
   * opts.system → attach a system listener (always attached).
   */
  channel(client, topic, { config = {}, presence = false } = {}) {
    const channel = client.channel(topic, { config })
    const rec = {
      channel,
      client,
      statuses: new EventLog(`${client.__label} ${topic} subscribe statuses`),
      broadcasts: new EventLog(`${client.__label} ${topic} broadcasts`),
      presence: new EventLog(`${client.__label} ${topic} presence events`),
      system: new EventLog(`${client.__label} ${topic} system events`),
    }
    channel.on('broadcast', { event: '*' }, (msg) => rec.broadcasts.add(msg))
    channel.on('system', {}, (msg) => rec.system.add(msg))
    if (presence) {
      channel.on('presence', { event: 'sync' }, () =>
        rec.presence.add({ event: 'sync', state: structuredClone(channel.presenceState()) })
      )
      channel.on('presence', { event: 'join' }, ({ key, newPresences, currentPresences }) =>
        rec.presence.add({ event: 'join', key, newPresences, currentPresences })
      )
      channel.on('presence', { event: 'leave' }, ({ key, leftPresences, currentPresences }) =>
        rec.presence.add({ event: 'leave', key, leftPresences, currentPresences })
      )
    }
    rec.subscribe = () => {
      channel.subscribe((status, err) =>
        rec.statuses.add({ status, error: err?.message ?? null, cause: err?.cause ?? null, at: Date.now() })
      )
      return rec
    }
    /** Wait for SUBSCRIBED; fail fast if another terminal status arrives first. */
    rec.subscribed = async (timeoutMs = 10000) => {
      const s = await rec.statuses.waitFor(() => true, timeoutMs, 'a subscribe status')
      if (s.status !== 'SUBSCRIBED') {
        throw new Error(`expected SUBSCRIBED on ${topic} (${client.__label}), got ${describe(s)}`)
      }
      return rec
    }
    return rec
  }

  /** client + channel + subscribe + wait for SUBSCRIBED. */
  async join(topic, { vsn, key, accessToken, config = {}, presence = false, name, realtime } = {}) {
    const client = this.client({ vsn, key, accessToken, name, realtime })
    if (accessToken) await withTimeout(client.realtime.setAuth(), 5000, 'setAuth() via accessToken callback')
    const rec = this.channel(client, topic, { config, presence })
    rec.subscribe()
    await rec.subscribed()
    return rec
  }

  /** Track a child process so it is killed during teardown. */
  adopt(child) {
    this.children.push(child)
    return child
  }

  diagnostics() {
    const parts = []
    for (const { label, log } of this.clients) {
      parts.push(`--- ${label} frames (realtime-js logger, last ${Math.min(log.length, 80)}):\n${log.slice(-80).join('\n')}`)
    }
    if (this.server) parts.push(`--- server stderr tail:\n${this.server.stderrTail(60)}`)
    return parts.join('\n')
  }

  async cleanup() {
    for (const child of this.children) {
      try {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      } catch {}
    }
    await Promise.all(
      this.clients.map(async ({ client }) => {
        try {
          await withTimeout(client.removeAllChannels(), 3000, 'removeAllChannels')
        } catch {}
        try {
          client.realtime.disconnect()
        } catch {}
      })
    )
    this.clients = []
  }
}

/**
 * test() wrapper: fn(ctx) gets a fresh Ctx bound to getServer(); clients are
 * torn down afterwards; failures get frame logs + server stderr appended.
 */
export function scenario(name, getServer, fn, { timeout = 60000 } = {}) {
  return test(name, { timeout }, async () => {
    const ctx = new Ctx(getServer())
    try {
      await fn(ctx)
    } catch (err) {
      const diag = ctx.diagnostics()
      if (err && typeof err === 'object') {
        try {
          const extra = `\n\n===== diagnostics =====\n${diag}`
          err.message = `${err.message}${extra}`
          if (typeof err.stack === 'string') err.stack = `${err.stack}${extra}`
        } catch {}
      }
      throw err
    } finally {
      await ctx.cleanup()
    }
  })
}

/** Assert that nothing matching pred has been seen in `log` (snapshot now). */
export function assertNone(log, pred, label) {
  const bad = log.filter(pred)
  if (bad.length > 0) {
    throw new Error(`${label}: expected none, got ${describe(bad)}`)
  }
}

/** Path to the Node 22 binary this suite runs on (for child processes). */
export const NODE_BIN = process.execPath
export const FIXTURES = path.join(here, 'fixtures')

/**
 * Start fixtures/peer.mjs in a child Node 22 process (a real, separate
 * supabase-js client). Returns { child, lines: EventLog, send(obj) }.
 */
export function spawnPeer(ctx, cfg) {
  const child = spawn(NODE_BIN, [path.join(FIXTURES, 'peer.mjs')], {
    cwd: JS_DIR,
    env: { ...process.env, PEER_CONFIG: JSON.stringify(cfg) },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  ctx.adopt(child)
  const lines = new EventLog(`peer ${cfg.presenceKey ?? ''} stdout`)
  const stderr = []
  let partial = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop()
    for (const l of parts) {
      if (!l.trim()) continue
      try {
        lines.add(JSON.parse(l))
      } catch {
        lines.add({ type: 'raw', line: l })
      }
    }
  })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (c) => {
    stderr.push(c)
    if (stderr.length > 100) stderr.shift()
  })
  child.on('exit', (code, signal) => lines.add({ type: 'exit', code, signal }))
  ctx.clients.push({ label: `peer process ${cfg.presenceKey ?? ''}`, log: { slice: () => [`stdout: ${describe(lines.items)}`, `stderr: ${stderr.join('')}`], length: 2 } })
  return {
    child,
    lines,
    send: (obj) => child.stdin.write(JSON.stringify(obj) + '\n'),
  }
}
