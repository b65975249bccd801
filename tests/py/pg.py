"""A throwaway PostgreSQL 15 for the Postgres Changes test (mirrors tests/common/pg.rs).

initdb + pg_ctl as the `postgres` user (runuser; the suite runs as root) in a temp dir
chowned to postgres, wal_level=logical, TCP on a free loopback port with trust auth,
fsync off. SQL goes through psql. stop(): `pg_ctl -m immediate stop` + rm -rf.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path:
    for c in ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"):
        if (Path(c) / "pg_ctl").exists() and (Path(c) / "initdb").exists():
            return Path(c)
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
    return Path(out.stdout.strip())


def _psql(bindir: Path) -> str:
    for c in (bindir / "psql", Path("/usr/lib/postgresql/15/bin/psql")):
        if c.exists():
            return str(c)
    return "psql"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(bin_: Path, *args: str, timeout: float = 90) -> None:
    r = subprocess.run(["runuser", "-u", "postgres", "--", str(bin_), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{bin_} {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")


class Pg:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the Postgres Changes test starts PostgreSQL with `runuser -u postgres` and must run as root")
        self.bindir = _bindir()
        self.psql = _psql(self.bindir)
        self.dir = Path(tempfile.mkdtemp(prefix=f"realtime-py-pg-{os.getpid()}-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = _free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self._stopped = False
        atexit.register(self.stop)
        try:
            subprocess.run(["chown", "postgres:postgres", str(self.dir)], check=True, timeout=10)
            _as_postgres(self.bindir / "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                         "--locale=C.UTF-8", "--no-sync", "-N")
            opts = (f"-c wal_level=logical -c max_wal_senders=20 -c max_replication_slots=20 -c listen_addresses=127.0.0.1 "
                    f"-p {self.port} -c unix_socket_directories={self.dir} -c fsync=off -c synchronous_commit=off")
            _as_postgres(self.bindir / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start")
        except Exception as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"could not start a throwaway PostgreSQL: {e}\nserver.log tail:\n{tail}") from e

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no server.log>"

    def sql(self, sql: str, timeout: float = 15) -> list[str]:
        """Runs SQL with psql (several statements allowed); returns the output lines (unaligned, tuples only)."""
        r = subprocess.run(
            [self.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-d", "postgres", "-c", sql],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5", "PGCLIENTENCODING": "UTF8"},
        )
        if r.returncode != 0:
            raise AssertionError(f"psql failed (exit {r.returncode}) on:\n{sql}\nstderr: {r.stderr}\nserver.log tail:\n{self.log_tail(15)}")
        return [l for l in r.stdout.splitlines() if l]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
