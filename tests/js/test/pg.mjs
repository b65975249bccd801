// A throwaway PostgreSQL 15 cluster for the Postgres Changes tests, started from Node
// the way tests/common/pg.rs does it: `initdb` + `pg_ctl` run as the `postgres` user
// (via runuser; the suite runs as root) in a temp dir chowned to postgres,
// wal_level=logical, TCP on a free loopback port with trust auth, fsync off.
// SQL goes through `psql`. stop() does `pg_ctl -m immediate stop` and removes the dir;
// a process 'exit' hook does the same if the test file dies before its after() hook.
//
//   const pg = await startPg()
//   await pg.sql('create table …')        // several statements allowed (one transaction)
//   const rows = await pg.query('select 1') // unaligned, tuples only: array of lines
//   pg.url                                  // postgres://postgres@127.0.0.1:<port>/postgres
//   await pg.stop()

import { execFile, execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, readFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

function bindir() {
  for (const c of ['/usr/lib/postgresql/15/bin', '/usr/local/bin', '/usr/bin']) {
    if (existsSync(path.join(c, 'pg_ctl')) && existsSync(path.join(c, 'initdb'))) return c
  }
  try {
    return execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim()
  } catch (e) {
    throw new Error(`PostgreSQL binaries not found (no pg_ctl/initdb in the usual places, pg_config failed: ${e.message})`)
  }
}

function psqlPath(bin) {
  for (const c of [path.join(bin, 'psql'), '/usr/lib/postgresql/15/bin/psql']) {
    if (existsSync(c)) return c
  }
  return 'psql' // from PATH
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Runs a PostgreSQL binary as the `postgres` user (initdb refuses root); throws with its output. */
function asPostgres(bin, args, timeoutMs = 90000) {
  const r = spawnSync('runuser', ['-u', 'postgres', '--', bin, ...args], { encoding: 'utf8', timeout: timeoutMs })
  if (r.error) throw new Error(`runuser ${bin} ${args.join(' ')}: ${r.error.message}`)
  if (r.status !== 0) {
    throw new Error(`${bin} ${args.join(' ')} exited ${r.status} (signal ${r.signal})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)
  }
  return r
}

export async function startPg() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('the Postgres Changes tests start PostgreSQL with `runuser -u postgres` and must run as root')
  }
  const bin = bindir()
  const psql = psqlPath(bin)
  const dir = mkdtempSync(path.join(os.tmpdir(), `realtime-js-pg-${process.pid}-`))
  const data = path.join(dir, 'data')
  const logFile = path.join(dir, 'server.log')
  const port = await freePort()
  let stopped = false

  const stopSync = () => {
    if (stopped) return
    stopped = true
    spawnSync('runuser', ['-u', 'postgres', '--', path.join(bin, 'pg_ctl'), '-D', data, '-m', 'immediate', '-w', 'stop'], {
      stdio: 'ignore',
      timeout: 30000,
    })
    try {
      rmSync(dir, { recursive: true, force: true })
    } catch {}
  }
  process.once('exit', stopSync)

  const logTail = (n = 40) => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-n).join('\n')
    } catch {
      return '<no server.log>'
    }
  }

  try {
    execFileSync('chown', ['postgres:postgres', dir])
    asPostgres(path.join(bin, 'initdb'), [
      '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync', '-N',
    ])
    const opts = [
      '-c wal_level=logical',
      '-c max_wal_senders=20',
      '-c max_replication_slots=20',
      '-c listen_addresses=127.0.0.1',
      `-p ${port}`,
      `-c unix_socket_directories=${dir}`,
      '-c fsync=off',
      '-c synchronous_commit=off',
    ].join(' ')
    asPostgres(path.join(bin, 'pg_ctl'), ['-D', data, '-l', logFile, '-w', '-t', '60', '-o', opts, 'start'])
  } catch (e) {
    const tail = logTail()
    stopSync()
    throw new Error(`could not start a throwaway PostgreSQL: ${e.message}\nserver.log tail:\n${tail}`)
  }

  const url = `postgres://postgres@127.0.0.1:${port}/postgres`

  /** psql -c SQL; resolves to stdout lines (unaligned, tuples only), rejects with stderr. */
  function psqlRun(sql, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      execFile(
        psql,
        ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', sql],
        { encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, PGCONNECT_TIMEOUT: '5', PGCLIENTENCODING: 'UTF8' } },
        (err, stdout, stderr) => {
          if (err) {
            const why = err.killed ? `killed after ${timeoutMs} ms` : `exit ${err.code}`
            reject(new Error(`psql (${why}) failed on:\n${sql}\nstderr: ${stderr}\nserver.log tail:\n${logTail(15)}`))
            return
          }
          resolve(stdout.split('\n').filter((l) => l !== ''))
        }
      )
    })
  }

  return {
    port,
    url,
    dir,
    logTail,
    sql: (sql, timeoutMs) => psqlRun(sql, timeoutMs).then(() => undefined),
    query: psqlRun,
    async stop() {
      stopSync()
      process.removeListener('exit', stopSync)
    },
  }
}
