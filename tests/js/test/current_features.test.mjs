// Features of current supabase-js (2.119.1) that a server must honour, against a
// throwaway PostgreSQL 15:
//  * `config.postgres_changes_options: { wait, timeout }`: SUBSCRIBED means the
//    postgres_changes bindings are live; a refusal or a timeout is CHANNEL_ERROR with the
//    server's reason instead of a silent SUBSCRIBED;
//  * `config.broadcast.replication_ready`: a `system` message once the Broadcast from
//    Database stream runs, or the channel closed when it does not run in time.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, scenario, topicName, withTimeout, token, describe, sleep } from './harness.mjs'
import { startPg } from './pg.mjs'

const SCHEMA = `
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table public.waited (id int primary key, body text);
grant select on public.waited to anon, authenticated;
create table public.unpublished (id int primary key, body text);
grant select on public.unpublished to anon, authenticated;
create publication supabase_realtime for table public.waited;
`

let pg
let server
// Streams nothing for a long time: joins that wait for the stream must time out.
let slowServer
// No database: Broadcast from Database can never run.
let noDbServer
before(async () => {
  pg = await startPg()
  await pg.sql(SCHEMA)
  server = await startServer({ env: { DATABASE_URL: pg.url } })
  slowServer = await startServer({
    env: { DATABASE_URL: pg.url, REPLICATION_START_DELAY_MS: '600000', SLOT_NAME: 'slow_slot', MESSAGES_SLOT_NAME: 'slow_messages_slot' },
  })
  noDbServer = await startServer({ env: { REPLICATION_READY_TIMEOUT_MS: '1000' } })
})
after(async () => {
  await server?.stop()
  await slowServer?.stop()
  await noDbServer?.stop()
  await pg?.stop()
})

const withPgLog = (s) => () => ({
  ...s(),
  stderrTail: (n) => `${s().stderrTail(n)}\n--- postgres server.log tail:\n${pg.logTail(20)}`,
})
const srv = withPgLog(() => server)
const slow = withPgLog(() => slowServer)
const noDb = () => noDbServer

/** A channel with one postgres_changes binding on `table`, recording its changes. */
function waitingChannel(ctx, table, options) {
  const client = ctx.client({ name: `wait-${table}` })
  const rec = ctx.channel(client, topicName('wait'), { config: { postgres_changes_options: options } })
  rec.changes = []
  rec.channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table }, (p) => rec.changes.push(p))
  return rec
}

// ---------------------------------------------------------------- wait

scenario('wait: SUBSCRIBED means live, so an INSERT committed right after it arrives', srv, async (ctx) => {
  const rec = waitingChannel(ctx, 'waited', { wait: true }).subscribe()
  await rec.subscribed(30000)
  await pg.sql(`insert into public.waited values (1, 'right after SUBSCRIBED')`)
  const deadline = Date.now() + 10000
  while (rec.changes.length === 0 && Date.now() < deadline) await sleep(25)
  assert.equal(rec.changes.length, 1, `the INSERT committed right after SUBSCRIBED: ${describe(rec.changes)}`)
  assert.equal(rec.changes[0].new.body, 'right after SUBSCRIBED')
})

scenario('wait: a table outside the publication is CHANNEL_ERROR with the reason, not SUBSCRIBED', srv, async (ctx) => {
  const rec = waitingChannel(ctx, 'unpublished', { wait: true, timeout: 5000 }).subscribe()
  const s = await rec.statuses.waitFor(() => true, 20000, 'a subscribe status')
  assert.equal(s.status, 'CHANNEL_ERROR', `status: ${describe(s)}`)
  assert.match(
    s.error,
    /^Unable to subscribe to changes with given parameters\. Please check Realtime is enabled for the given connect parameters: .*table: unpublished/,
    describe(s)
  )
})

scenario('wait: a stream that is not up within the timeout is CHANNEL_ERROR PostgresChangesSubscribeTimeout', slow, async (ctx) => {
  const rec = waitingChannel(ctx, 'waited', { wait: true, timeout: 1000 }).subscribe()
  const s = await rec.statuses.waitFor(() => true, 20000, 'a subscribe status')
  assert.equal(s.status, 'CHANNEL_ERROR', `status: ${describe(s)}`)
  assert.equal(
    s.error,
    'PostgresChangesSubscribeTimeout: Timed out after 1000ms waiting for the postgres_changes subscription'
  )
})

scenario('without wait the join is answered at once, as before (SUBSCRIBED though the stream is not up)', slow, async (ctx) => {
  const client = ctx.client({ name: 'nowait' })
  const rec = ctx.channel(client, topicName('nowait'))
  rec.channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'waited' }, () => {})
  rec.subscribe()
  await rec.subscribed(5000)
})

// ---------------------------------------------------------------- replication_ready

scenario('replication_ready: one system message once the Broadcast from Database stream runs', srv, async (ctx) => {
  const topic = topicName('ready')
  const client = ctx.client({ name: 'ready' })
  const rec = ctx.channel(client, topic, { config: { broadcast: { replication_ready: true } } }).subscribe()
  await rec.subscribed()
  const sys = await rec.system.waitFor((m) => m?.extension === 'system', 15000, 'the replication ready message')
  assert.deepEqual(sys, {
    extension: 'system',
    status: 'ok',
    message: 'Replication connection established',
    channel: topic,
  })
  await sleep(500)
  assert.equal(rec.system.filter((m) => m?.extension === 'system').length, 1, 'sent once')
})

scenario('replication_ready: not running in time closes the channel with the reason', noDb, async (ctx) => {
  const topic = topicName('notready')
  const client = ctx.client({ name: 'notready' })
  const rec = ctx.channel(client, topic, { config: { broadcast: { replication_ready: true } } }).subscribe()
  await rec.subscribed()
  const sys = await rec.system.waitFor((m) => m?.extension === 'system', 10000, 'the not-ready message')
  assert.deepEqual(sys, {
    extension: 'system',
    status: 'error',
    message: 'Replication connection was not established in time',
    channel: topic,
  })
  const closed = await rec.statuses.waitFor((s) => s.status === 'CLOSED', 5000, 'CLOSED after the error')
  assert.equal(closed.status, 'CLOSED')
})

scenario('without replication_ready no such message is sent', noDb, async (ctx) => {
  const rec = await ctx.join(topicName('plain'))
  await sleep(1500)
  assert.equal(rec.system.filter((m) => m?.extension === 'system').length, 0, describe(rec.system))
  assert.equal(rec.statuses.filter((s) => s.status !== 'SUBSCRIBED').length, 0, describe(rec.statuses))
})
