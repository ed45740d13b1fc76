"""Every call ends within its deadline while a dependency misbehaves, and the system heals.

One app instance (API, ingest, projector) reaches PostgreSQL, Redis and Kafka
through a :class:`FaultProxy` each, on its own topic and consumer group. The
bounds below are liveness checks (nothing hangs), not benchmarks: a request
must *end* (503 or success), well before a hung call would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from devstack import ensure_topics
from entrypoints.bootstrap import create_app
from eventfold.appkeys import PUBLISHER, REQUEST_DEADLINE, SEND_POLICY
from eventfold.publisher import SendPolicy
from eventfold.settings import Settings
from tests.conftest import _delete_topics
from tests.faultproxy import FaultProxy
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi

pytestmark = pytest.mark.integration

#: A request must end within this (its own deadline is 6 s): a liveness bound.
BOUND = 15.0
#: /health/ready must answer within this while a dependency stalls.
READY_BOUND = 2.5
T = TypeVar("T")


def with_port(url: str, host: str, port: int) -> str:
    """``url`` with its host:port replaced (credentials and path kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}"))


def host_port(url: str, default: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default


@dataclass
class Faulty:
    """The app behind the proxies, and the proxies."""

    api: Api
    app: web.Application
    pg: FaultProxy
    redis: FaultProxy
    kafka: FaultProxy

    async def heal(self) -> None:
        for proxy in (self.pg, self.redis, self.kafka):
            await proxy.heal()


async def within(call: Awaitable[T], bound: float = BOUND) -> T:
    """``call``'s result; fails the test (instead of hanging it) past ``bound`` seconds."""
    return await asyncio.wait_for(call, bound)


async def ready(f: Faulty) -> tuple[float, int, dict[str, Any]]:
    started = time.monotonic()
    resp = await within(f.api.client.get("/health/ready"), READY_BOUND)
    body: dict[str, Any] = await resp.json()
    return time.monotonic() - started, resp.status, body


async def eventually_ready(f: Faulty, bound: float = 15.0) -> None:
    """Wait until every check of ``/health/ready`` is ok again; fails naming the
    checks still not ok.

    A healed dependency's first probe can still time out (the pool reconnects), a
    report is reused for up to a second, and a processor is ready only once its first
    call after the fault has gone through (one of its backoffs): readiness comes back,
    not at once.
    """
    deadline = time.monotonic() + bound
    while True:
        _, status, body = await ready(f)
        if status == 200 and body["status"] == "ok":
            return
        down = {n: c for n, c in body["checks"].items() if c["status"] != "ok"}
        assert time.monotonic() < deadline, f"still not ready: {down}"
        await asyncio.sleep(0.2)


async def put(t: TenantApi, record: str, doc: dict[str, Any]) -> ClientResponse:
    return await within(t.call("PUT", f"/collections/things/records/{record}", json=doc))


async def get(t: TenantApi, record: str, token: str | None = None) -> ClientResponse:
    return await within(t.read(f"/collections/things/records/{record}", token))


async def eventually_written(t: TenantApi, record: str, doc: dict[str, Any]) -> str:
    """PUT until accepted (a client retrying 503s); return the consistency token."""
    deadline = time.monotonic() + 30
    while True:
        resp = await put(t, record, doc)
        if resp.status == 202:
            token: str = (await resp.json())["consistency_token"]
            return token
        assert resp.status == 503, await resp.text()
        assert time.monotonic() < deadline, "the system did not recover"
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def faulty(stack: Settings) -> AsyncIterator[Faulty]:
    pg_host, pg_port = host_port(stack.database_url, 5432)
    redis_host, redis_port = host_port(stack.redis_url, 6379)
    kafka_host, _, kafka_port = stack.kafka_bootstrap.split(",")[0].rpartition(":")
    pg = await FaultProxy(pg_host, pg_port).start()
    redis = await FaultProxy(redis_host, redis_port).start()
    kafka = await FaultProxy(kafka_host, int(kafka_port), kafka=True).start()
    topics = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.faults",
        dlq_topic=f"{stack.dlq_topic}.faults",
        consumer_group_prefix=f"{stack.consumer_group_prefix}-faults",
    )
    await ensure_topics(topics)
    settings = dataclasses.replace(
        topics,
        database_url=with_port(stack.database_url, pg.host, pg.port),
        redis_url=with_port(stack.redis_url, redis.host, redis.port),
        kafka_bootstrap=kafka.address,
    )
    app = create_app(settings, SESSION_PARTS)
    app[REQUEST_DEADLINE] = 6.0
    app[SEND_POLICY] = SendPolicy(
        attempt_timeout=2.0, deadline=5.0, start_timeout=2.0, stop_timeout=3.0
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    f = Faulty(Api(client, settings), app, pg, redis, kafka)
    try:
        yield f
    finally:
        await f.heal()
        await client.close()
        for proxy in (pg, redis, kafka):
            await proxy.stop()
        await _delete_topics(topics, [topics.events_topic, topics.dlq_topic])


@pytest_asyncio.fixture(loop_scope="session")
async def ft(faulty: Faulty) -> AsyncIterator[TenantApi]:
    """A fresh tenant of the proxied app; every proxy healed after the test."""
    doc = await within(faulty.api.create_tenant(), 30)
    try:
        yield TenantApi(faulty.api, doc["id"])
    finally:
        await faulty.heal()


async def test_postgres_stall_ends_every_call_and_heals(faulty: Faulty, ft: TenantApi) -> None:
    token = await eventually_written(ft, "before", {"n": 1})
    assert (await get(ft, "before", token)).status == 200

    faulty.pg.stall()
    elapsed, status, body = await ready(faulty)
    assert status == 503, body
    assert body["checks"]["postgres"]["status"] == "down"
    assert elapsed < READY_BOUND

    # A cached record is still served (from Redis); other reads need PostgreSQL: they
    # end (503), they do not hang. Writes only need Kafka (the tenant is known):
    # accepted or 503, never a hang.
    cached, read, write = await asyncio.gather(
        get(ft, "before"), get(ft, "never-read"), put(ft, "during", {"n": 2})
    )
    assert cached.status == 200, await cached.text()
    assert (await cached.json())["version"] == 1
    assert read.status == 503, await read.text()
    assert read.headers.get("Retry-After")
    assert read.content_type == "application/problem+json"
    assert write.status in (202, 503), await write.text()

    await faulty.pg.heal()
    token = await eventually_written(ft, "after", {"n": 3})
    doc = await (await get(ft, "after", token)).json()
    assert doc["version"] == 1
    await eventually_ready(faulty)


async def test_redis_stall_degrades_but_writes_and_reads_go_on(
    faulty: Faulty, ft: TenantApi
) -> None:
    faulty.redis.stall()
    elapsed, status, body = await ready(faulty)
    assert elapsed < READY_BOUND
    assert status == 200, body
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "down"

    # The dedup fails open: the write is published without it, and read back.
    resp = await put(ft, "r1", {"n": 1})
    assert resp.status == 202, await resp.text()
    token = (await resp.json())["consistency_token"]
    got = await get(ft, "r1", token)
    assert got.status == 200, await got.text()

    await faulty.redis.heal()
    await eventually_ready(faulty)
    token = await eventually_written(ft, "r2", {"n": 2})
    assert (await get(ft, "r2", token)).status == 200


async def test_kafka_stall_answers_503_in_time_and_the_producer_is_renewed(
    faulty: Faulty, ft: TenantApi
) -> None:
    publisher = faulty.app[PUBLISHER]
    renewals = publisher.renewals
    faulty.kafka.stall()
    elapsed, status, body = await ready(faulty)
    assert elapsed < READY_BOUND
    assert status == 503, body
    assert body["checks"]["kafka"]["status"] == "down"

    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    batch = [
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "test",
            "type": "record.upserted",
            "subject": "things/k1",
            "data": {"n": 1},
        }
    ]
    writes = await asyncio.gather(
        within(ft.call("POST", "/events", json=batch)), put(ft, "k2", {"n": 2})
    )
    for resp in writes:
        assert resp.status == 503, await resp.text()
        assert resp.headers.get("Retry-After")
    # Reads need no Kafka.
    assert (await get(ft, "nothing")).status == 404

    await faulty.kafka.heal()
    # The client retries the same batch (same id): exactly one effect.
    deadline = time.monotonic() + 30
    while True:
        resp = await within(ft.call("POST", "/events", json=batch))
        if resp.status == 202:
            break
        assert resp.status == 503, await resp.text()
        assert time.monotonic() < deadline, "kafka did not come back"
        await asyncio.sleep(0.5)
    token = (await resp.json())["consistency_token"]
    doc = await (await get(ft, "k1", token)).json()
    assert doc["version"] == 1
    assert publisher.renewals > renewals


async def test_resets_and_refusals_heal_without_a_restart(faulty: Faulty, ft: TenantApi) -> None:
    await eventually_written(ft, "x0", {"n": 0})
    # Every open connection (pool, LISTEN, producer, consumer, Redis) is reset at once.
    for proxy in (faulty.pg, faulty.redis, faulty.kafka):
        proxy.reset()
    token = await eventually_written(ft, "x1", {"n": 1})
    assert (await get(ft, "x1", token)).status == 200

    # PostgreSQL refusing connections: reads that need it end in a 503, fast. (Not x1:
    # the read with its token above may have filled the cache, which serves it.)
    await faulty.pg.close()
    resp = await get(ft, "never-read")
    assert resp.status == 503, await resp.text()
    _, status, body = await ready(faulty)
    assert status == 503, body
    assert body["checks"]["postgres"]["status"] == "down", body
    await faulty.pg.heal()

    # Added latency slows calls down but they still succeed.
    for proxy in (faulty.pg, faulty.redis, faulty.kafka):
        proxy.latency(0.05)
    token = await eventually_written(ft, "x2", {"n": 2})
    assert (await get(ft, "x2", token)).status == 200
    await faulty.heal()
    await eventually_ready(faulty)
