"""Redis failover with Sentinel: reads go on, readiness dips and recovers, Redis state works again.

A PRIVATE Redis set (primary, replica, three sentinels on free ports, data in a
temporary folder) started by ``devstack`` as ``infra up --redis-sentinel`` does;
Kafka, PostgreSQL and S3 are the session's (own topics and consumer groups, so
this app takes no partitions from the session's). Select it with ``-m recovery``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis as Client

from devstack import down_async, ensure_topics, status_async, up_async, with_sentinels
from devstack.process import live_pid
from devstack.redis import Redis
from devstack.sentinel import RedisReplica
from entrypoints.bootstrap import create_app
from eventfold.clients import redis_client
from eventfold.settings import Settings
from tests.conftest import free_ports
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi

pytestmark = [pytest.mark.integration, pytest.mark.recovery]

R = "/collections/things/records"
#: Long enough for Sentinel to see the master down (1 s), elect and promote on a busy machine.
FAILOVER_WITHIN = 60.0


def _quiet(_line: str) -> None:
    """Infra progress lines are noise in a test log."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sentinel_stack(stack: Settings) -> AsyncIterator[Settings]:
    """The session's settings with a private Redis under Sentinel; torn down even on failure."""
    home = Path(tempfile.mkdtemp(prefix="eventfold-sentinel-"))
    run = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        home=home,
        redis_url=f"redis://127.0.0.1:{free_ports(2)}/0",
        redis_sentinels=tuple(f"127.0.0.1:{free_ports(1)}" for _ in range(3)),
        redis_sentinel_service=f"ef-{run}",
        external=frozenset({"kafka", "postgres", "s3"}),  # the session's, only probed
        events_topic=f"{stack.events_topic}.sentinel-{run}",
        dlq_topic=f"{stack.dlq_topic}.sentinel-{run}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}-sentinel-{run}",
        cache_breaker_cooldown_seconds=0.5,
    )
    try:
        await up_async(settings, progress=_quiet)
        await ensure_topics(settings)
        yield settings
    finally:
        await down_async(settings, progress=_quiet)
        shutil.rmtree(home, ignore_errors=True)


async def _eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + FAILOVER_WITHIN
    while not await check():
        assert time.monotonic() < deadline, f"not within {FAILOVER_WITHIN} s: {what}"
        await asyncio.sleep(0.2)


async def _sentinels_master(settings: Settings) -> tuple[str, int] | None:
    host, port = settings.sentinel_addresses[0]
    client = Client(
        host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )
    try:
        found = await client.sentinel_get_master_addr_by_name(settings.redis_sentinel_service)
    finally:
        await client.aclose()
    return None if found is None else (str(found[0]), int(found[1]))


async def _ready(api: Api) -> dict[str, Any]:
    resp = await asyncio.wait_for(api.client.get("/health/ready"), 5)
    body: dict[str, Any] = await resp.json()
    return body


class Readers:
    """Readers of records, each answer checked against the record as written."""

    def __init__(self, tenant: TenantApi, records: dict[str, dict[str, Any]]) -> None:
        self.tenant = tenant
        self.records = records
        self.stop = asyncio.Event()
        self.answers = 0
        self.wrong: list[str] = []

    async def read(self, ids: list[str]) -> None:
        while not self.stop.is_set():
            for record_id in ids:
                resp = await self.tenant.read(f"{R}/{record_id}")
                self.answers += 1
                if resp.content_type != "application/json":
                    self.wrong.append(f"{record_id}: {resp.status} {await resp.text()}")
                    continue
                body = await resp.json()
                got = (resp.status, body.get("id"), body.get("version"), body.get("data"))
                if got != (200, record_id, 1, self.records[record_id]):
                    self.wrong.append(f"{record_id}: {resp.status} {body}")

    async def more(self, count: int) -> None:
        """Wait until ``count`` more reads were answered (the readers are not stuck)."""
        target = self.answers + count
        await _eventually(f"{count} more reads", self._reached(target))

    def _reached(self, target: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return self.answers >= target

        return check


async def _dedup_works(tenant: TenantApi) -> bool:
    """A repeated event id is answered as a duplicate (Redis answers the dedup)."""
    event = {
        "specversion": "1.0",
        "id": f"dup-{uuid.uuid4().hex[:8]}",
        "source": "test/sentinel",
        "type": "record.upserted",
        "subject": "things/dup",
        "data": {"n": 1},
    }
    first = await tenant.write("POST", "/events", json=event)
    again = await tenant.write("POST", "/events", json=event)
    return (first["events"][0]["duplicate"], again["events"][0]["duplicate"]) == (False, True)


async def _rate_limit_works(api: Api) -> bool:
    """A tenant with a burst of 2 (and no refill to speak of) gets 429 on its third read."""
    doc = await api.create_tenant(limits={"requests_per_second": 0.001, "burst": 2})
    tenant = TenantApi(api, doc["id"])
    statuses = [(await tenant.read(R)).status for _ in range(3)]
    return statuses == [200, 200, 429]


async def test_a_killed_primary_fails_over_while_reads_go_on(sentinel_stack: Settings) -> None:
    settings = sentinel_stack
    primary, replica = Redis(settings), RedisReplica(settings)

    # `infra up --redis-sentinel` again leaves every process alone; status lists them.
    pids = {s.name: s.detail for s in await status_async(settings)}
    await up_async(with_sentinels(settings), progress=_quiet)
    again = await status_async(settings)
    assert {s.name: s.detail for s in again} == pids
    names = [s.name for s in again if s.running and s.managed]
    assert names == ["redis", "redis-replica", *(f"redis-sentinel-{n}" for n in (1, 2, 3))]
    assert await _sentinels_master(settings) == ("127.0.0.1", primary.port)

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, SESSION_PARTS)))
    await client.start_server()
    try:
        api = Api(client, settings)

        async def ok() -> bool:
            return (await _ready(api))["status"] == "ok"

        await _eventually("ready before the failover", ok)
        tenant = TenantApi(api, (await api.create_tenant())["id"])
        records = {f"r{n}": {"n": n, "text": f"record {n}"} for n in range(12)}
        token = ""
        for record_id, data in records.items():
            token = (await tenant.write("PUT", f"{R}/{record_id}", json=data))["consistency_token"]
        cached, uncached = list(records)[:6], list(records)[6:]
        for record_id in cached:  # in the cache now; the others have never been read
            assert (await tenant.read(f"{R}/{record_id}", token)).status == 200

        readers = Readers(tenant, records)
        tasks = [asyncio.create_task(readers.read(cached)) for _ in range(3)]
        try:
            await readers.more(30)
            pid = live_pid(primary.pid_path, primary.markers)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            tasks += [asyncio.create_task(readers.read(uncached)) for _ in range(2)]

            async def degraded() -> bool:
                body = await _ready(api)
                return body["status"] == "degraded" and body["checks"]["redis"]["status"] == "down"

            await _eventually("readiness says redis is down", degraded)
            await readers.more(30)  # served from PostgreSQL while no master answers
            await _eventually("ready again on the promoted replica", ok)
            assert await _sentinels_master(settings) == ("127.0.0.1", replica.port)
            await readers.more(30)
        finally:
            readers.stop.set()
            await asyncio.gather(*tasks)
        assert readers.wrong == []

        # Redis state works again, on the new primary (the old one is dead).
        assert live_pid(primary.pid_path, primary.markers) is None
        await _eventually("the rate limit applies again", lambda: _rate_limit_works(api))
        await _eventually("dedup answers again", lambda: _dedup_works(tenant))

        # A restarted stack brings the old primary back as a replica of the new one.
        await up_async(settings, progress=_quiet)
        assert primary.master() == ("127.0.0.1", replica.port)
        assert (await node_info(primary.url))["role"] == "slave"

        # A coordinated failover demotes the master under open connections: their next
        # write meets a read-only replica, and the clients move to the new master.
        state = redis_client(settings)
        try:
            await state.set("sentinel-test", "before")  # a pooled connection to the master
            sentinel = Client(host="127.0.0.1", port=settings.sentinel_addresses[0][1])
            try:

                async def synced() -> bool:
                    info = await node_info(primary.url)
                    return info.get("master_link_status") == "up"

                await _eventually("the old primary synced", synced)
                await sentinel.sentinel_failover(settings.redis_sentinel_service)
            finally:
                await sentinel.aclose()

            async def back() -> bool:
                return await _sentinels_master(settings) == ("127.0.0.1", primary.port)

            await _eventually("the old primary promoted again", back)

            async def written() -> bool:
                try:
                    return bool(await state.set("sentinel-test", "after"))
                except Exception:
                    return False

            await _eventually("a write reaches the new master", written)
        finally:
            await state.aclose()
        await _eventually("dedup answers after the switch back", lambda: _dedup_works(tenant))
    finally:
        await client.close()


async def node_info(url: str) -> dict[str, Any]:
    """One Redis server's ``INFO replication``."""
    node = Client.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        info: dict[str, Any] = await node.info("replication")
    finally:
        await node.aclose()
    return info
