// The README's quick start, as written: the server started as "Two commands" says
// (no JWT_SECRET: development mode, keys on stdout), and the "Use it from supabase-js"
// program saved as demo.mjs in a CommonJS package (what `npm init -y` writes) and run
// with the ANON_KEY line's value, on Node 22. A second copy sees the first one's
// broadcast, as the README says.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { REALTIME_BIN, JS_DIR, NODE_BIN, EventLog, withTimeout, describe } from './harness.mjs'

const README = path.resolve(JS_DIR, '../../README.md')

/** The fenced blocks of `lang` in the README section titled `heading`. */
function blocks(heading, lang) {
  const text = readFileSync(README, 'utf8')
  const start = text.indexOf(`\n## ${heading}\n`)
  assert.ok(start >= 0, `README has a "## ${heading}" section`)
  const next = text.indexOf('\n## ', start + 1)
  const section = text.slice(start, next === -1 ? undefined : next)
  const re = new RegExp('^```' + lang + '\\n([\\s\\S]*?)^```$', 'gm')
  return [...section.matchAll(re)].map((m) => m[1])
}

/** Spawns a process; its stdout lines go to an EventLog. */
function launch(bin, args, opts) {
  const child = spawn(bin, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines = new EventLog(`${path.basename(args[0] ?? bin)} stdout`)
  const stderr = []
  let partial = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop()
    for (const l of parts) lines.add(l)
  })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (c) => stderr.push(c))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  return { child, lines, exited, stderr: () => stderr.join('').slice(-4000) }
}

test('README quick start: demo.mjs runs verbatim against the server in development mode', { timeout: 60000 }, async () => {
  const [shell] = blocks('Use it from supabase-js', 'sh')
  assert.match(shell, /^npm install @supabase\/supabase-js$/m, 'the README installs supabase-js')
  assert.match(shell, /^ANON_KEY=\S+ node demo\.mjs$/m, 'the README runs demo.mjs with ANON_KEY')
  const [program] = blocks('Use it from supabase-js', 'js')
  assert.ok(program, 'the README has the program')
  const [twoCommands] = blocks('Two commands', 'sh')
  assert.equal(twoCommands.trim(), 'cargo run --release', 'the quick start runs the server with cargo run')

  const env = { ...process.env, PORT: '0', RUST_LOG: 'warn' }
  delete env.JWT_SECRET
  delete env.JWT_JWKS
  delete env.DATABASE_URL
  const server = launch(REALTIME_BIN, [], { env })
  const dir = mkdtempSync(path.join(JS_DIR, '.readme-demo-'))
  const copies = []
  try {
    const first = await server.lines.waitFor(() => true, 20000, 'the listening line')
    const m = /^realtime-rs listening on 127\.0\.0\.1:(\d+)$/.exec(first)
    assert.ok(m, first)
    const keyLine = await server.lines.waitFor((l) => l.startsWith('ANON_KEY='), 5000, 'the ANON_KEY= line')
    const demoEnv = { ...process.env, ANON_KEY: keyLine.slice('ANON_KEY='.length), SUPABASE_URL: `http://127.0.0.1:${m[1]}` }

    writeFileSync(path.join(dir, 'package.json'), '{"name":"realtime-demo","version":"1.0.0","type":"commonjs"}\n')
    writeFileSync(path.join(dir, 'demo.mjs'), program)
    const a = launch(NODE_BIN, ['demo.mjs'], { cwd: dir, env: demoEnv })
    copies.push(a)
    // util.inspect may spread the presence state over several lines
    await a.lines.waitFor((l) => l.startsWith('online {'), 15000, 'a presence sync line')
    await a.lines.waitFor((l) => l.includes("'planner-ana'"), 15000, 'planner-ana in the presence state')
    await a.lines.waitFor((l) => l === "timeline { moved: 'speeches' }", 15000, 'its own broadcast (self: true)')

    const b = launch(NODE_BIN, ['demo.mjs'], { cwd: dir, env: demoEnv })
    copies.push(b)
    await b.lines.waitFor((l) => l === "timeline { moved: 'speeches' }", 15000, 'the second copy runs too')
    await a.lines.waitFor(
      () => a.lines.filter((l) => l === "timeline { moved: 'speeches' }").length >= 2,
      15000,
      "the first copy hears the second copy's broadcast"
    )
  } catch (e) {
    e.message += copies.map((c, i) => `\n--- copy ${i + 1} stderr:\n${c.stderr()}\n--- stdout: ${describe(c.lines.items)}`).join('')
    e.message += `\n--- server stderr:\n${server.stderr()}`
    throw e
  } finally {
    for (const c of copies) c.child.kill('SIGKILL')
    server.child.kill('SIGTERM')
    await withTimeout(server.exited, 10000, 'server exits')
    rmSync(dir, { recursive: true, force: true })
  }
})
