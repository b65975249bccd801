"""Smoke tests with the unmodified PyPI client realtime==2.34.1 (vsn 1.0.0).

protocol.md §0.2 (py specifics), §1.3 (py heartbeat with ref null), §3.1
(py presence push without `type`), §5.3 (py presence needs phx_ref), §6.5
(py http_send), §8.3 (py expiry reporting), §12.
Every wait is bounded; every test body runs under an overall asyncio timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlparse

from realtime import AsyncRealtimeClient

from harness import ANON_KEY, JsPeer, Recorder, token, wait_until

TEST_TIMEOUT = 60
_uniq = 0


def topic_name(prefix: str) -> str:
    global _uniq
    _uniq += 1
    import os
    import time

    return f"{prefix}-py-{os.getpid()}-{int(time.time() * 1000) % 10**8}-{_uniq}"


def run(coro_fn) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), TEST_TIMEOUT))


def config(key: str = "", presence: bool = False, self_: bool = False, ack: bool = False) -> dict[str, Any]:
    return {
        "config": {
            "broadcast": {"ack": ack, "self": self_},
            "presence": {"key": key, "enabled": presence},
            "private": False,
        }
    }


class Member:
    """One AsyncRealtimeClient + one channel with recorders attached."""

    def __init__(self, server, topic: str, *, key: str = "", presence: bool = False, token_: str = ANON_KEY, name: str = "") -> None:
        self.name = name or key or "member"
        self.client = AsyncRealtimeClient(server.realtime_url, token=token_, auto_reconnect=False)
        self.channel = self.client.channel(topic, config(key=key, presence=presence))
        self.statuses = Recorder(f"{self.name} statuses")
        self.broadcasts = Recorder(f"{self.name} broadcasts")
        self.presence = Recorder(f"{self.name} presence")
        self.system = Recorder(f"{self.name} system")
        self.channel.on_broadcast("*", self.broadcasts.add)
        self.channel.on_system(self.system.add)
        if presence:
            self.channel.on_presence_sync(lambda: self.presence.add(("sync",)))
            self.channel.on_presence_join(lambda k, cur, new: self.presence.add(("join", k, new)))
            self.channel.on_presence_leave(lambda k, cur, left: self.presence.add(("leave", k, left)))

    async def subscribe(self, expect: str = "SUBSCRIBED") -> "Member":
        await asyncio.wait_for(
            self.channel.subscribe(lambda status, err: self.statuses.add((str(getattr(status, "value", status)), err))),
            15,
        )
        first = await self.statuses.wait_for(lambda s: True, 10, "a subscribe status")
        assert first[0] == expect, f"{self.name}: expected {expect}, got {first!r}"
        return self

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.remove_all_channels(), 5)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.client.close(), 5)
        except Exception:
            pass


async def _cleanup(*members: Member) -> None:
    for m in members:
        await m.close()


def test_py_connects_with_vsn_1_and_joins(server) -> None:
    async def body() -> None:
        m = Member(server, topic_name("py-join"), name="py")
        try:
            q = parse_qs(urlparse(m.client.endpoint_url()).query)
            assert q.get("vsn") == ["1.0.0"]
            assert urlparse(m.client.endpoint_url()).path == "/realtime/v1/websocket"
            await m.subscribe()
            # py sends a heartbeat with ref null right after connecting; the
            # connection must survive it and the channel keep working
            await asyncio.sleep(0.5)
            assert m.client.is_connected
            assert m.channel.is_joined
        finally:
            await _cleanup(m)

    run(body)


def test_py_broadcast_between_two_py_clients(server) -> None:
    async def body() -> None:
        topic = topic_name("py-bc")
        a = Member(server, topic, name="A")
        b = Member(server, topic, name="B")
        try:
            await a.subscribe()
            await b.subscribe()
            await a.channel.send_broadcast("ping", {"n": 1, "s": "é"})
            got = await b.broadcasts.wait_for(lambda p: p["event"] == "ping", 5, "ping on B")
            assert got["payload"] == {"n": 1, "s": "é"}
            await b.channel.send_broadcast("pong", {"n": 2})
            got = await a.broadcasts.wait_for(lambda p: p["event"] == "pong", 5, "pong on A")
            assert got["payload"] == {"n": 2}
            await asyncio.sleep(0.2)
            assert [p for p in a.broadcasts.items if p["event"] == "ping"] == [], "self:false sender got its own message"
            assert [p for p in b.broadcasts.items if p["event"] == "pong"] == [], "self:false sender got its own message"
        finally:
            await _cleanup(a, b)

    run(body)


def test_py_presence_track_sync_join_leave(server) -> None:
    async def body() -> None:
        topic = topic_name("py-presence")
        a = Member(server, topic, key="py-a", presence=True, name="A")
        b = Member(server, topic, key="py-b", presence=True, name="B")
        try:
            await a.subscribe()
            await b.subscribe()
            await b.channel.track({"name": "B", "n": 2})
            join = await a.presence.wait_for(lambda e: e[0] == "join" and e[1] == "py-b", 5, "join py-b on A")
            assert [p.get("name") for p in join[2]] == ["B"]
            assert isinstance(join[2][0].get("presence_ref"), str)
            await a.presence.wait_for(lambda e: e[0] == "sync", 5, "sync on A")
            await wait_until(lambda: "py-b" in a.channel.presence_state(), 5, "py-b in A's state")
            state = a.channel.presence_state()
            assert [m.get("name") for m in state["py-b"]] == ["B"]

            await a.channel.track({"name": "A", "n": 1})
            await b.presence.wait_for(lambda e: e[0] == "join" and e[1] == "py-a", 5, "join py-a on B")
            await wait_until(lambda: sorted(b.channel.presence_state()) == ["py-a", "py-b"], 5, "both keys in B's state")

            await b.channel.untrack()
            leave = await a.presence.wait_for(lambda e: e[0] == "leave" and e[1] == "py-b", 5, "leave py-b on A")
            assert len(leave[2]) == 1
            await wait_until(lambda: sorted(a.channel.presence_state()) == ["py-a"], 5, "py-b gone from A's state")
            assert [s[0] for s in a.statuses.items] == ["SUBSCRIBED"]
        finally:
            await _cleanup(a, b)

    run(body)


def test_py_http_send_reaches_py_member(server) -> None:
    async def body() -> None:
        topic = topic_name("py-rest")
        recv = Member(server, topic, name="receiver")
        sender = AsyncRealtimeClient(server.realtime_url, token=ANON_KEY, auto_reconnect=False)
        try:
            await recv.subscribe()
            ch = sender.channel(topic, config())
            await asyncio.wait_for(ch.http_send("via-rest", {"k": "v", "n": [1, 2]}), 15)  # raises unless 202
            got = await recv.broadcasts.wait_for(lambda p: p["event"] == "via-rest", 5, "via-rest on receiver")
            assert got["payload"] == {"k": "v", "n": [1, 2]}
        finally:
            await _cleanup(recv)
            await sender.close()

    run(body)


def test_py_and_js_exchange_broadcasts(server) -> None:
    async def body() -> None:
        topic = topic_name("py-js")
        py = Member(server, topic, name="py")
        peer = await JsPeer.start({"url": server.http_url, "key": ANON_KEY, "topic": topic})
        try:
            await py.subscribe()
            st = await peer.lines.wait_for(lambda l: l.get("type") in ("status", "eof"), 15, "js peer subscribe status")
            assert st.get("status") == "SUBSCRIBED", f"js peer: {peer.lines.items!r}"

            await py.channel.send_broadcast("from-py", {"lang": "python", "n": 1})
            got = await peer.lines.wait_for(
                lambda l: l.get("type") == "broadcast" and l["msg"].get("event") == "from-py", 5, "from-py at js (vsn 2)"
            )
            assert got["msg"]["payload"] == {"lang": "python", "n": 1}

            await peer.send({"cmd": "send", "event": "from-js", "payload": {"lang": "js", "n": 2}})
            got = await py.broadcasts.wait_for(lambda p: p["event"] == "from-js", 5, "from-js at py (vsn 1)")
            assert got["payload"] == {"lang": "js", "n": 2}
        finally:
            await peer.stop()
            await _cleanup(py)

    run(body)


def test_py_token_expiry_reports_error_then_closed(server) -> None:
    async def body() -> None:
        short = token("authenticated", exp_in=2, sub="py-expiring")
        m = Member(server, topic_name("py-expiry"), token_=short, name="expiring")
        try:
            await m.subscribe()
            # py: a system status:error → CHANNEL_ERROR, then phx_close → CLOSED (protocol.md §8.3)
            err = await m.statuses.wait_for(lambda s: s[0] == "CHANNEL_ERROR", 10, "CHANNEL_ERROR at expiry")
            assert "Token has expired" in str(err[1]), f"error: {err!r}"
            await m.statuses.wait_for(lambda s: s[0] == "CLOSED", 5, "CLOSED after phx_close")
        finally:
            await _cleanup(m)

    run(body)
