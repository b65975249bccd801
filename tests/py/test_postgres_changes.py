"""Postgres Changes with the unmodified PyPI client realtime==2.34.1 (vsn 1.0.0) against a
throwaway PostgreSQL 15 (tests/py/pg.py) and the real binary started with DATABASE_URL.

protocol.md §7.3 (py gets the raw `{"data", "ids"}` payload; its pydantic model needs every
data key), §7.4 (wait for `Subscribed to PostgreSQL` before writing), §12.2 (py reports
CHANNEL_ERROR on any `system` error). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from realtime import AsyncRealtimeClient

from harness import ANON_KEY, Recorder, start_server
from pg import Pg

TEST_TIMEOUT = 60
USER_A = "11111111-1111-1111-1111-111111111111"

SCHEMA = """
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table public.py_typed (
  id bigserial primary key, title text, done boolean default false, count int4, meta jsonb,
  tags text[], amount numeric, at timestamptz, owner uuid);
grant select on public.py_typed to anon, authenticated, service_role;
create publication supabase_realtime for table public.py_typed;
"""


@pytest.fixture(scope="module")
def pg():
    p = Pg()
    try:
        p.sql(SCHEMA)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def server(pg):
    # named `server` so conftest's failure hook appends this server's stderr
    srv = start_server(env={"DATABASE_URL": pg.url})
    yield srv
    srv.stop()


def test_py_on_postgres_changes_insert_gets_a_typed_record(server, pg) -> None:
    async def body() -> None:
        client = AsyncRealtimeClient(server.realtime_url, token=ANON_KEY, auto_reconnect=False)
        statuses = Recorder("py statuses")
        system = Recorder("py system")
        inserts = Recorder("py INSERT callback")
        try:
            channel = client.channel("py-pg-changes")
            channel.on_postgres_changes("INSERT", schema="public", table="py_typed", callback=inserts.add)
            channel.on_system(system.add)
            await asyncio.wait_for(
                channel.subscribe(lambda status, err: statuses.add((str(getattr(status, "value", status)), err))), 15
            )
            first = await statuses.wait_for(lambda s: True, 10, "a subscribe status")
            assert first[0] == "SUBSCRIBED", f"expected SUBSCRIBED, got {first!r}"
            sys = await system.wait_for(
                lambda m: m.extension == "postgres_changes", 15, "the postgres_changes system message"
            )
            assert (sys.channel, sys.extension, sys.message, sys.status) == (
                "py-pg-changes", "postgres_changes", "Subscribed to PostgreSQL", "ok"
            ), f"{sys!r}; statuses: {statuses.items!r}"

            await asyncio.to_thread(
                pg.sql,
                f"""insert into py_typed (title, done, count, meta, tags, amount, at, owner)
                    values ('from "py"', true, 42, '{{"k": [1, {{"x": null}}]}}', '{{"x y",z}}', 12.50,
                            '2025-11-03 09:32:55.123+00', '{USER_A}')""",
            )
            got = await inserts.wait_for(lambda p: True, 10, "the INSERT")
            data = got["data"]
            assert got["ids"] == [channel.postgres_changes_callbacks[0].id], got
            assert (data["schema"], data["table"], data["type"], data["errors"]) == ("public", "py_typed", "INSERT", None)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["commit_timestamp"]), data
            assert "old_record" not in data, data
            assert {c["name"]: c["type"] for c in data["columns"]} == {
                "id": "int8", "title": "text", "done": "bool", "count": "int4", "meta": "jsonb",
                "tags": "_text", "amount": "numeric", "at": "timestamptz", "owner": "uuid",
            }
            record = data["record"]
            assert record == {
                "id": 1,
                "title": 'from "py"',
                "done": True,
                "count": 42,
                "meta": {"k": [1, {"x": None}]},
                "tags": ["x y", "z"],
                "amount": 12.5,
                "at": "2025-11-03T09:32:55.123+00:00",
                "owner": USER_A,
            }, record
            assert type(record["id"]) is int and type(record["count"]) is int and type(record["done"]) is bool

            # an UPDATE does not reach the INSERT binding; the sentinel INSERT after it does
            await asyncio.to_thread(pg.sql, "update py_typed set done = false where id = 1")
            await asyncio.to_thread(pg.sql, "insert into py_typed (title) values ('sentinel')")
            await inserts.wait_for(lambda p: p["data"]["record"]["title"] == "sentinel", 10, "the sentinel INSERT")
            await asyncio.sleep(0.3)
            assert [(p["data"]["type"], p["data"]["record"]["id"]) for p in inserts.items] == [("INSERT", 1), ("INSERT", 2)]
            assert [s[0] for s in statuses.items] == ["SUBSCRIBED"]
        finally:
            try:
                await asyncio.wait_for(client.remove_all_channels(), 5)
            except Exception:
                pass
            try:
                await asyncio.wait_for(client.close(), 5)
            except Exception:
                pass

    asyncio.run(asyncio.wait_for(body(), TEST_TIMEOUT))
