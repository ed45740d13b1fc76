"""Tenants placed across two PostgreSQL servers: each server's projector folds its own.

A PRIVATE second cluster (``postgres-b`` on a free port, data in a temporary folder)
started by ``devstack`` as ``infra up`` does for ``EVENTFOLD_DATABASE_SERVERS``; the
session's cluster is ``main``. The app runs with its own topic and consumer groups.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from devstack import down_async, ensure_topics, up_async
from eventfold.clients import open_pool
from eventfold.ids import tenant_schema
from eventfold.settings import Settings
from tests.conftest import EVENTFOLD, free_port
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi, serving
from tests.integration.test_crash import (
    checksum,
    crash_lane,
    produce,
    reference_fold,
    workload,
)

pytestmark = [pytest.mark.integration]

R = "/collections/things/records"


def _quiet(_line: str) -> None:
    """Infra progress lines are noise in a test log."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def two_servers(stack: Settings) -> AsyncIterator[Settings]:
    """The session's settings with a private second server ``b``; torn down even on failure."""
    home = Path(tempfile.mkdtemp(prefix="eventfold-placement-"))
    run = uuid.uuid4().hex[:8]
    b = f"postgresql://eventfold:eventfold@127.0.0.1:{free_port()}/eventfold"
    settings = dataclasses.replace(
        stack,
        home=home,
        database_servers=(f"b={b}",),
        external=frozenset({"kafka", "postgres", "redis", "s3"}),  # the session's
        events_topic=f"{stack.events_topic}.placement-{run}",
        dlq_topic=f"{stack.dlq_topic}.placement-{run}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}-placement-{run}",
    )
    try:
        await up_async(settings, progress=_quiet)
        await ensure_topics(settings)
        yield settings
    finally:
        await down_async(settings, progress=_quiet)
        shutil.rmtree(home, ignore_errors=True)


async def _schemas(settings: Settings) -> dict[str, set[str]]:
    """The tenant schemas on each server."""
    out: dict[str, set[str]] = {}
    for name, url in settings.server_urls.items():
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT nspname FROM pg_namespace")
        finally:
            await conn.close()
        out[name] = {r["nspname"] for r in rows}
    return out


async def test_each_tenant_is_folded_on_its_server_and_read_from_it(two_servers: Settings) -> None:
    # A tenant from before the second server: created while main was the only one.
    async with serving(dataclasses.replace(two_servers, database_servers=()), SESSION_PARTS) as one:
        old_id = (await Api(one, two_servers).create_tenant())["id"]
    async with serving(two_servers, SESSION_PARTS) as client:
        placed = Api(client, two_servers)
        new = TenantApi(placed, (await placed.create_tenant())["id"])
        old = TenantApi(placed, old_id)
        main = await open_pool(two_servers)
        try:
            directory = dict(
                await main.fetch(
                    "SELECT tenant, server FROM eventfold.tenant_placement"
                    " WHERE tenant = ANY($1::text[])",
                    [old.id, new.id],
                )
            )
        finally:
            await main.close()
        # The old tenant keeps main; the new one goes to b, which has none.
        assert directory == {old.id: "main", new.id: "b"}

        tokens = {}
        for t in (old, new):
            for n in range(3):
                doc = await t.write("POST", R, json={"id": f"r{n}", "data": {"owner": t.id}})
            tokens[t.id] = doc["consistency_token"]
        for t in (old, new):
            page = await t.read_json(R, tokens[t.id])
            assert sorted(i["id"] for i in page["items"]) == ["r0", "r1", "r2"]
            assert {i["data"]["owner"] for i in page["items"]} == {t.id}
            one = await t.read_json(f"{R}/r1")
            assert one["data"] == {"owner": t.id}
            history = await t.read_json("/events", tokens[t.id])
            assert sum(e["subject"].startswith("things/") for e in history["items"]) == 3, history

        # Each tenant's schema is on its server only: folded once, where it lives.
        schemas = await _schemas(two_servers)
        new_schema, old_schema = (tenant_schema(t.id).strip('"') for t in (new, old))
        assert new_schema in schemas["b"]
        assert new_schema not in schemas["main"]
        assert old_schema in schemas["main"]
        assert old_schema not in schemas["b"]

        # The platform admin's list merges both servers' tenants.
        ids: set[str] = set()
        after = ""
        while True:  # every page: the shared stack holds other tests' tenants too
            listed = await placed.request("GET", f"/v1/tenants?limit=1000{after}")
            page = await listed.json()
            ids |= {t["id"] for t in page["items"]}
            if page["next"] is None:
                break
            after = f"&after={page['next']}"
        assert {old.id, new.id} <= ids
        # Each per-server processor is listed per server, with its own lag.
        listed = await placed.request("GET", "/v1/processors")
        names = {p["name"] for p in (await listed.json())["items"]}
        assert {"projector", "projector@b", "cache@b", "workflows@b", "archiver"} <= names
        assert "archiver@b" not in names

        # The commands go to each tenant's server.
        status, doc, err = await _eventfold(
            two_servers, "tenants", "placement", "--tenant", old.id, "--tenant", new.id
        )
        assert (status, doc) == (0, {old.id: "main", new.id: "b"}), err
        for t in (old, new):
            status, doc, err = await _eventfold(two_servers, "events", "--tenant", t.id)
            assert status == 0, err
            assert sum(e["subject"].startswith("things/") for e in doc) == 3, doc
        for command in ("verify", "replay", "verify"):
            status, doc, err = await _eventfold(
                two_servers, command, "--tenant", old.id, "--tenant", new.id
            )
            assert status == 0, (command, json.dumps(doc, indent=1, default=str), err)
            assert sorted(r["tenant"] for r in doc["tenants"]) == sorted([old.id, new.id])
        page = await new.read_json(R)
        assert sorted(i["id"] for i in page["items"]) == ["r0", "r1", "r2"]
        schemas = await _schemas(two_servers)
        assert new_schema in schemas["b"]
        assert new_schema not in schemas["main"]


async def _eventfold(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """Run ``eventfold ARGS --json`` with ``settings``' servers and topics."""
    env = {
        **os.environ,
        "EVENTFOLD_DATABASE_SERVERS": ",".join(settings.database_servers),
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        EVENTFOLD,
        *args,
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


CRASH_TOTAL = 30_000
CRASH_KILLS = 3


async def test_sigkilled_projectors_of_two_servers_each_end_equal_to_the_fold(
    two_servers: Settings,
) -> None:
    """One ``eventfold process projector`` (an instance per server) SIGKILLed mid-stream
    and restarted: each server holds exactly its tenants, each equal to a fresh fold."""
    rng = random.Random(20261207)
    run = uuid.uuid4().hex[:6]
    lane = await crash_lane(two_servers, run)
    tenants = [f"crash{run}{n}" for n in range(4)]
    where = {t: ("main", "b")[n % 2] for n, t in enumerate(tenants)}
    pools = {name: await open_pool(lane.on_server(name)) for name in lane.server_urls}
    try:
        # Placed as POST /v1/tenants places them: before their first event.
        async with pools["main"].acquire() as conn:
            await conn.executemany(
                "INSERT INTO eventfold.tenant_placement (tenant, server) VALUES ($1, $2)",
                list(where.items()),
            )
        events = workload(tenants, rng, CRASH_TOTAL)
        log = await produce(lane, events)
        env = {
            **os.environ,
            "EVENTFOLD_DATABASE_SERVERS": ",".join(lane.database_servers),
            "EVENTFOLD_EVENTS_TOPIC": lane.events_topic,
            "EVENTFOLD_DLQ_TOPIC": lane.dlq_topic,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": lane.consumer_group_prefix,
            "EVENTFOLD_PROJECTOR_BATCH_SIZE": "500",
            "EVENTFOLD_HTTP_PORT": str(free_port()),
            "EVENTFOLD_LOG_LEVEL": "WARNING",
        }
        consumer = f"{lane.consumer_group_prefix}.projector"

        async def progress() -> int:
            """The least of the servers' checkpoints (each server's projector reads all)."""
            sums = []
            for pool in pools.values():
                async with pool.acquire() as conn:
                    sums.append(
                        await conn.fetchval(
                            "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
                            " WHERE consumer = $1",
                            consumer,
                        )
                    )
            return int(min(sums))

        targets = sorted(rng.sample(range(CRASH_TOTAL // 10, CRASH_TOTAL * 6 // 10), CRASH_KILLS))
        for target in targets:
            proc = subprocess.Popen([EVENTFOLD, "process", "projector"], env=env)
            goal = max(target, await progress() + 100)  # fresh progress since the restart
            while await progress() < goal:
                assert proc.poll() is None, "the projector died by itself"
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0, 0.05))  # land anywhere inside a batch
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            assert await progress() < CRASH_TOTAL, "a kill landed after the end"
        proc = subprocess.Popen([EVENTFOLD, "process", "projector", "--burst"], env=env)
        assert await asyncio.to_thread(proc.wait, 300) == 0
        assert await progress() == CRASH_TOTAL

        expected = reference_fold(log)
        for t, server in where.items():
            other = "b" if server == "main" else "main"
            async with pools[other].acquire() as conn:
                assert await conn.fetchval("SELECT to_regnamespace($1)", f"t_{t}") is None
            async with pools[server].acquire() as conn:
                rows = await conn.fetch(
                    f'SELECT collection, id, version, data, deleted FROM "t_{t}".records'
                )
                history = await conn.fetchval(f'SELECT count(*) FROM "t_{t}".events')
            actual = [
                (r["collection"], r["id"], r["version"], r["data"], r["deleted"]) for r in rows
            ]
            want = [
                (c, i, rec.version, rec.data, not rec.live) for (c, i), rec in expected[t].items()
            ]
            assert checksum(actual) == checksum(want), f"tenant {t} on {server} differs"
            assert history == len({ev["id"] for ev in events if ev["tenant"] == t}), t
    finally:
        for pool in pools.values():
            await pool.close()


async def test_a_tenant_moves_to_another_server_while_written_and_read(
    two_servers: Settings,
) -> None:
    """``eventfold tenants move`` under a writer and a reader: no read fails, every
    acknowledged write is on the new server once, and the old copy is gone."""
    async with serving(two_servers, SESSION_PARTS) as client:
        api = Api(client, two_servers)
        t = TenantApi(api, (await api.create_tenant())["id"])
        source = await _server_of(two_servers, t.id)
        target = "main" if source == "b" else "b"
        resp = await t.call(
            "POST", "/api-keys", roles=("admin",), json={"name": "bot", "roles": ["reader"]}
        )
        assert resp.status == 201, await resp.text()
        key_doc = await resp.json()
        acked: dict[str, int] = {}
        writes = 0
        failed_writes: list[str] = []
        failed_reads: list[str] = []
        last_token = key_doc["consistency_token"]
        stop = asyncio.Event()

        async def write() -> None:
            nonlocal last_token, writes
            n = 0
            while not stop.is_set():
                rid = f"r{n % 40}"
                resp = await t.call("PUT", f"{R}/{rid}", json={"n": n})
                if resp.status == 202:
                    acked[rid] = n
                    writes += 1
                    last_token = (await resp.json())["consistency_token"]
                else:
                    failed_writes.append(f"{resp.status} {await resp.text()}")
                n += 1
                await asyncio.sleep(0.01)

        async def read() -> None:
            while not stop.is_set():
                for path in (R, "/events?limit=5"):
                    resp = await t.read(path)
                    if resp.status != 200:
                        failed_reads.append(f"{path}: {resp.status} {await resp.text()}")
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
        try:
            await asyncio.sleep(1.0)
            status, doc, err = await _eventfold(
                two_servers, "tenants", "move", t.id, "--to", target, "--grace", "4"
            )
            assert status == 0, err
            assert (doc["from"], doc["to"]) == (source, target), doc
            assert doc["rows"] > 0, doc
            await asyncio.sleep(1.0)  # writes go on after the old copy is gone
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert len(acked) == 40, acked
        assert failed_writes == []
        assert failed_reads == []

        # Every acknowledged write is folded once, on the new server, and read back.
        page = await t.read_json(f"{R}?limit=100", last_token)
        assert {i["id"]: i["data"]["n"] for i in page["items"]} == acked
        assert await _server_of(two_servers, t.id) == target
        schemas = await _schemas(two_servers)
        assert tenant_schema(t.id).strip('"') in schemas[target]
        assert tenant_schema(t.id).strip('"') not in schemas[source]
        target_pool = await open_pool(two_servers.on_server(target))
        source_pool = await open_pool(two_servers.on_server(source))
        try:
            async with target_pool.acquire() as conn:
                put_events = await conn.fetchval(
                    f"SELECT count(*) FROM {tenant_schema(t.id)}.events WHERE type LIKE 'record.%'"
                )
                versions = await conn.fetchval(
                    f"SELECT sum(version) FROM {tenant_schema(t.id)}.records"
                )
            async with source_pool.acquire() as conn:
                left = await conn.fetchval(
                    "SELECT (SELECT count(*) FROM eventfold.tenants WHERE id = $1)"
                    " + (SELECT count(*) FROM eventfold.api_keys WHERE tenant = $1)",
                    t.id,
                )
                state = await conn.fetchval(
                    "SELECT state FROM eventfold.tenant_homes WHERE tenant = $1", t.id
                )
        finally:
            await target_pool.close()
            await source_pool.close()
        # One history row and one version per acknowledged write: none twice, none lost.
        assert put_events == versions == writes
        assert left == 0
        assert state == "gone"
        # Its API key moved with it.
        resp = await client.get(t.path(R), headers={"X-API-Key": key_doc["key"]})
        assert resp.status == 200, await resp.text()
        # The copy equals a fresh fold of the log, on the new server.
        status, doc, err = await _eventfold(two_servers, "verify", "--tenant", t.id)
        assert status == 0, (json.dumps(doc, default=str)[:2000], err)


async def _server_of(settings: Settings, tenant: str) -> str:
    status, doc, err = await _eventfold(settings, "tenants", "placement", "--tenant", tenant)
    assert status == 0, err
    server: str = doc[tenant]
    return server
