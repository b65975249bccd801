// The inspector page (GET /inspector) in a real browser: Debian's Chromium, headless,
// driven by puppeteer-core (which never downloads a browser). The page is used as a
// person would use it: deep links, typing into inputs, clicking buttons; what it shows is
// read from the DOM. supabase-js clients and the REST API are the other side.
//
// One PostgreSQL and one server for the file: private channels and Postgres Changes need
// the database. Chromium is required: without it every test here fails (no skip).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import puppeteer from 'puppeteer-core'
import { startServer, scenario, topicName, token, ANON_KEY, withTimeout, describe } from './harness.mjs'
import { startPg } from './pg.mjs'

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium'
const SERVICE_KEY = token({ role: 'service_role', expIn: 24 * 3600 })

const SCHEMA = `
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table public.inspector_items (id int primary key, note text);
grant select on public.inspector_items to anon, authenticated, service_role;
create publication supabase_realtime for table public.inspector_items;
`

let pg
let server
let browser
before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}: the inspector browser tests need it ` +
        `(apt-get install -y chromium, or set CHROMIUM_BIN to a Chromium/Chrome binary)`
    )
  }
  pg = await startPg()
  await pg.sql(SCHEMA)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
  browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] })
})
after(async () => {
  await browser?.close()
  await server?.stop()
  await pg?.stop()
})

/** The server, with the pages' console and DOM state added to failure diagnostics. */
const pages = []
const srv = () => ({
  ...server,
  stderrTail: (n) =>
    `${server.stderrTail(n)}\n--- postgres server.log tail:\n${pg.logTail(20)}\n--- pages:\n${pages
      .map((p) => `${p.label}: console ${describe(p.console)}\n${p.dom ?? ''}`)
      .join('\n')}`,
})

/** A fresh browser page at `<base>/inspector<query>` (base: the test server's URL). */
async function openPage(label, query = '', base = server.httpUrl) {
  const page = await browser.newPage()
  await page.setViewport({ width: 1280, height: 900 })
  const rec = { label, console: [], page }
  pages.push(rec)
  page.on('console', (m) => rec.console.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => rec.console.push(`pageerror: ${e.message}`))
  await page.goto(`${base}/inspector${query}`, { waitUntil: 'load' })
  page.snapshot = async () => {
    rec.dom = await page.evaluate(() =>
      ['socket-status', 'channel-status', 'error', 'channels-message', 'log']
        .map((id) => `#${id}: ${document.getElementById(id).textContent.slice(0, 1500)}`)
        .join('\n')
    )
  }
  return page
}

/** Runs fn(ctx, open) with pages that are snapshotted on failure and always closed. */
function browserScenario(name, fn) {
  scenario(name, srv, async (ctx) => {
    const mine = []
    const open = async (label, query, base) => {
      const p = await openPage(label, query, base)
      mine.push(p)
      return p
    }
    try {
      await fn(ctx, open)
    } catch (e) {
      for (const p of mine) await p.snapshot().catch(() => {})
      throw e
    } finally {
      for (const p of mine) await p.close().catch(() => {})
      pages.length = 0
    }
  })
}

const text = (page, selector) => page.$eval(selector, (el) => el.textContent)

async function waitForText(page, selector, needle, timeout = 10000) {
  try {
    await page.waitForFunction(
      (s, n) => (document.querySelector(s)?.textContent ?? '').includes(n),
      { timeout },
      selector,
      needle
    )
  } catch {
    throw new Error(`${selector} never showed ${JSON.stringify(needle)}; it shows ${JSON.stringify(await text(page, selector))}`)
  }
}

const joined = (page, timeout) => waitForText(page, '#channel-status', 'joined', timeout)

/** Replaces an input's value by typing, as a person does (select all, type). */
async function fill(page, selector, value) {
  await page.click(selector, { count: 3 })
  await page.$eval(selector, (el) => {
    el.value = ''
  })
  await page.type(selector, value)
  await page.$eval(selector, (el) => el.dispatchEvent(new Event('change', { bubbles: true })))
}

async function restBroadcast(messages, key = ANON_KEY) {
  const res = await fetch(`${server.httpUrl}/api/broadcast`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ messages }),
  })
  assert.equal(res.status, 202, `REST broadcast: ${res.status} ${await res.text()}`)
}

// ---------------------------------------------------------------- deep link

browserScenario('a deep link joins on load and shows REST broadcasts newest first, and Pause holds them back', async (ctx, open) => {
  const topic = topicName('insp-deep')
  const page = await open('deep link', `?topic=${encodeURIComponent(topic)}&apikey=${ANON_KEY}`)
  await joined(page)
  assert.equal(await text(page, '#channel-status'), `joined ${topic}`)
  // The key left the address bar; the topic stays, so the link can be shared.
  assert.ok(!page.url().includes('apikey'), page.url())
  assert.ok(page.url().includes(`topic=${encodeURIComponent(topic)}`), page.url())

  const first = `first-${Date.now()}`
  await restBroadcast([{ topic, event: 'rest-event', payload: { marker: first } }])
  await waitForText(page, '#log li.kind-broadcast', first)
  assert.match(await text(page, '#log li.kind-broadcast'), /rest-event/)

  // The single endpoint reaches a vsn 2 socket as a binary type-4 frame: decoded too.
  const binary = `binary-${Date.now()}`
  const res = await fetch(`${server.httpUrl}/api/broadcast/${encodeURIComponent(topic)}/events/single-event`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ANON_KEY}` },
    body: JSON.stringify({ marker: binary }),
  })
  assert.equal(res.status, 202)
  await waitForText(page, '#log li:first-child', binary)
  assert.match(await text(page, '#log li:first-child'), /single-event/)

  // Paused: nothing new is shown, the button counts what waits; resumed: it is on top.
  await page.click('#pause-btn')
  const held = `held-${Date.now()}`
  await restBroadcast([{ topic, event: 'while-paused', payload: { marker: held } }])
  await waitForText(page, '#pause-btn', '1 waiting')
  assert.ok(!(await text(page, '#log')).includes(held), 'a paused feed shows nothing new')
  await page.click('#pause-btn')
  await waitForText(page, '#log li:first-child', held)
  assert.equal(await text(page, '#pause-btn'), 'Pause')
  const order = await page.$$eval('#log li.kind-broadcast', (lis) => lis.map((li) => li.textContent))
  assert.ok(order[0].includes(held) && order[1].includes(binary) && order[2].includes(first), describe(order))

  // Unticking a kind hides its entries.
  await page.click('.kind-filter[value=broadcast]')
  assert.equal(await page.$eval('#log li.kind-broadcast', (el) => getComputedStyle(el).display), 'none')
  assert.notEqual(await page.$eval('#log li.kind-system', (el) => getComputedStyle(el).display), 'none')
  await page.click('.kind-filter[value=broadcast]')
  assert.notEqual(await page.$eval('#log li.kind-broadcast', (el) => getComputedStyle(el).display), 'none')

  // What arrives is shown as text, never as markup.
  const markup = `<img src=x id=injected-${Date.now()}>`
  await restBroadcast([{ topic, event: 'markup', payload: { html: markup } }])
  await waitForText(page, '#log li:first-child', 'markup')
  assert.equal(await page.$('img'), null, 'no element was created from a payload')

  // (5) a screenshot of the page as it is now, for the test log
  const file = path.join(os.tmpdir(), `realtime-inspector-${process.pid}-${Date.now()}.png`)
  await page.screenshot({ path: file, fullPage: true })
  assert.ok(statSync(file).size > 10000, 'the screenshot has content')
  console.log(`inspector screenshot: ${file}`)
})

// ---------------------------------------------------------------- from the page

browserScenario('joined from the form, the page broadcasts JSON and text to a supabase-js client and tracks presence', async (ctx, open) => {
  const topic = topicName('insp-form')
  const js = await ctx.join(topic, { name: 'supabase-js', presence: true, config: { presence: { key: 'js-user' } } })

  const page = await open('form')
  await fill(page, '#apikey', ANON_KEY)
  await fill(page, '#topic', topic)
  await fill(page, '#presence-key', 'inspector-person')
  await page.click('#join-btn')
  await joined(page)

  // JSON payload
  const marker = `json-${Date.now()}`
  await fill(page, '#bc-event', 'from-page')
  await fill(page, '#bc-payload', JSON.stringify({ marker, n: 1 }))
  await page.click('#bc-send')
  const got = await js.broadcasts.waitFor((m) => m.event === 'from-page', 10000, 'the page JSON broadcast')
  assert.deepEqual(got.payload, { marker, n: 1 })
  await waitForText(page, '#bc-status', 'sent at') // acked by the server
  await waitForText(page, '#log li.kind-broadcast', marker) // self: the page sees its own

  // Text payload: sent as a JSON string
  const words = `plain words ${Date.now()}`
  await page.click('#bc-text')
  await fill(page, '#bc-payload', words)
  await page.click('#bc-send')
  const textMsg = await js.broadcasts.waitFor((m) => m.payload === words, 10000, 'the page text broadcast')
  assert.equal(textMsg.event, 'from-page')

  // Invalid JSON is refused on the page, nothing is sent
  await page.click('#bc-json')
  await fill(page, '#bc-payload', '{not json')
  await page.click('#bc-send')
  await waitForText(page, '#error', 'not JSON')

  // Presence: track and untrack, seen by supabase-js; the page lists who is present
  await fill(page, '#pr-meta', JSON.stringify({ status: 'inspecting' }))
  await page.click('#pr-track')
  const join = await js.presence.waitFor((p) => p.event === 'join' && p.key === 'inspector-person', 10000, 'the page presence join')
  assert.equal(join.newPresences[0].status, 'inspecting')
  await js.channel.track({ who: 'supabase-js' })
  await waitForText(page, '#presence-list', 'js-user')
  await waitForText(page, '#presence-list', 'supabase-js')
  await waitForText(page, '#log', 'presence_diff')
  await page.click('#pr-untrack')
  await js.presence.waitFor((p) => p.event === 'leave' && p.key === 'inspector-person', 10000, 'the page presence leave')
  await waitForText(page, '#pr-status', 'untracked')

  // Leave: the server closes the channel and the page says so.
  await page.click('#leave-btn')
  await waitForText(page, '#log li:first-child', 'phx_close')
  assert.equal(await text(page, '#channel-status'), 'not joined')
})

// ---------------------------------------------------------------- private channels

browserScenario('a private topic joins with a service key and is refused to the anon key by RLS', async (ctx, open) => {
  const topic = topicName('insp-private')
  const page = await open('private', `?topic=${encodeURIComponent(topic)}&apikey=${SERVICE_KEY}&private=true`)
  await joined(page)
  assert.equal(await text(page, '#channel-status'), `joined ${topic} (private)`)
  const marker = `private-${Date.now()}`
  await restBroadcast([{ topic, event: 'secret', payload: { marker }, private: true }], SERVICE_KEY)
  await waitForText(page, '#log li.kind-broadcast', marker)

  const anon = await open('private as anon', `?topic=${encodeURIComponent(topic)}&apikey=${ANON_KEY}&private=true`)
  await waitForText(anon, '#error', 'Unauthorized')
  assert.equal(await text(anon, '#channel-status'), 'join refused')
})

// ---------------------------------------------------------------- channel list

browserScenario('the channel list shows live topics with member and presence counts to a service key only', async (ctx, open) => {
  const prefix = topicName('insp-list')
  const topic = `${prefix}:room`
  const first = await ctx.join(topic, { name: 'member 1', presence: true, config: { presence: { key: 'm1' } } })
  await first.channel.track({ here: true })

  const page = await open('list')
  await fill(page, '#apikey', SERVICE_KEY)
  await fill(page, '#channels-prefix', prefix)
  const row = `#channels-body tr[data-topic="${topic}"]`
  const cells = async () => page.$$eval(`${row} td`, (tds) => tds.slice(0, 4).map((td) => td.textContent))
  await page.waitForSelector(row, { timeout: 10000 })
  await page.waitForFunction((r) => document.querySelector(r)?.children[3].textContent === '1', { timeout: 10000 }, row)
  assert.deepEqual(await cells(), [topic, 'no', '1', '1'])
  assert.equal(await page.$$eval('#channels-body tr', (trs) => trs.length), 1, 'the prefix filter keeps only ours')

  // It refreshes by itself: a second member shows up without a click.
  await ctx.join(topic, { name: 'member 2' })
  await page.waitForFunction((r) => document.querySelector(r)?.children[2].textContent === '2', { timeout: 10000 }, row)

  // Its Join button joins that topic.
  await page.click(`${row} button`)
  await joined(page)
  assert.equal(await text(page, '#channel-status'), `joined ${topic}`)

  // With the anon key: an error instead of the list.
  const anon = await open('list as anon')
  await fill(anon, '#apikey', ANON_KEY)
  await waitForText(anon, '#channels-message', 'needs a service_role key')
  assert.equal(await anon.$eval('#channels-message', (el) => el.className), 'error')
  assert.equal(await anon.$eval('#channels-table', (el) => el.hidden), true)
  assert.equal(await anon.$$eval('#channels-body tr', (trs) => trs.length), 0)
  // Not in development mode: no dev keys on offer.
  assert.equal(await anon.$eval('#dev-keys', (el) => el.hidden), true)
})

// ---------------------------------------------------------------- postgres changes

browserScenario('a deep link with a table and filter shows the matching Postgres Changes only', async (ctx, open) => {
  const topic = topicName('insp-pg')
  const query = `?topic=${encodeURIComponent(topic)}&apikey=${SERVICE_KEY}&table=inspector_items&filter=id%3Deq.7&event=INSERT`
  const page = await open('postgres changes', query)
  await joined(page)
  await waitForText(page, '#log', 'Subscribed to PostgreSQL', 20000)
  await withTimeout(pg.sql(`insert into public.inspector_items values (6, 'not-this-one'), (7, 'this-one-${process.pid}')`), 10000, 'insert')
  await waitForText(page, '#log li.kind-postgres_changes', `this-one-${process.pid}`, 15000)
  const changes = await page.$$eval('#log li.kind-postgres_changes', (lis) => lis.map((li) => li.textContent))
  assert.equal(changes.length, 1, describe(changes))
  assert.match(changes[0], /INSERT public\.inspector_items/)
})

// ---------------------------------------------------------------- development mode

browserScenario('in development mode the page uses the printed keys by itself, also under /realtime/v1', async (ctx, open) => {
  const dev = await startServer({ env: { JWT_SECRET: undefined } }) // no JWT configuration
  try {
    const topic = topicName('insp-dev')
    const page = await open('dev mode', `?topic=${encodeURIComponent(topic)}`, `${dev.httpUrl}/realtime/v1`)
    await joined(page)
    await waitForText(page, '#key-info', 'role anon')
    assert.equal(await page.$eval('#dev-keys', (el) => el.hidden), false)
    await page.click('#dev-service')
    await waitForText(page, '#key-info', 'role service_role')
    await page.waitForSelector(`#channels-body tr[data-topic="${topic}"]`, { timeout: 10000 })

    const keys = await (await fetch(`${dev.httpUrl}/inspector/dev-keys`)).json()
    const marker = `dev-${Date.now()}`
    const res = await fetch(`${dev.httpUrl}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${keys.anon}` },
      body: JSON.stringify({ messages: [{ topic, event: 'dev', payload: { marker } }] }),
    })
    assert.equal(res.status, 202)
    await waitForText(page, '#log li.kind-broadcast', marker)
  } finally {
    await dev.stop()
  }
})
