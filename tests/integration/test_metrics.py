"""The metrics infra/prometheus alerts on and infra/grafana draws, after real actions.

Processor readiness, the projector's lag in seconds (through a PostgreSQL outage),
the dead-letter count after a redrive by another process, disabled webhook
endpoints, and the bounded per-tenant top N.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers.projector import processor as projector_module
from consumers.runtime.runner import supervise
from entrypoints.registry import PROCESSORS
from eventfold import deadletters
from eventfold.appkeys import METRICS
from eventfold.clients import open_pool
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from tests.faultproxy import FaultProxy
from tests.integration.conftest import SESSION_PROCESSORS, Api, TenantApi
from tests.integration.test_dead_letters import MERGE, install_bug
from tests.integration.test_faults import host_port, with_port
from tests.integration.test_projector import Lane, created, lane, upsert  # noqa: F401 - the fixture
from tests.integration.test_webhooks import Receiver, put, subscribe

R = "/collections/orders/records"


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` in a /metrics text: labels → value."""
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return samples(text, name).get(frozenset(labels.items()))


def processor_ready(metrics: Metrics, processor: str) -> float | None:
    """``eventfold_processor_ready`` of ``processor`` as a scrape of ``metrics`` shows it."""
    return sample(generate_latest(metrics.registry).decode(), "eventfold_processor_ready",
                  processor=processor)  # fmt: skip


async def scrape(api: Api) -> str:
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


async def until(check: Callable[[], Awaitable[Any]], within: float = 60) -> Any:
    """``check()``'s first truthy answer, polled; fails the test after ``within`` s."""
    async with asyncio.timeout(within):
        while not (found := await check()):
            await asyncio.sleep(0.1)
    return found


async def test_every_running_processor_reports_ready(api: Api) -> None:
    waiting: dict[str, float | None] = {}

    async def all_ready() -> bool:
        text = await scrape(api)
        found = {
            p: sample(text, "eventfold_processor_ready", processor=p) for p in SESSION_PROCESSORS
        }
        waiting.clear()
        waiting.update({p: v for p, v in found.items() if v != 1.0})
        return not waiting

    try:
        await until(all_ready)
    except TimeoutError:
        # Which processor, and what its readiness says, is what a failure needs to show.
        ready = await (await api.client.get("/health/ready")).json()
        pytest.fail(f"not ready after 60 s: {waiting}; /health/ready: {ready}")
    # Processors the app does not run are not reported at all.
    text = await scrape(api)
    assert sample(text, "eventfold_processor_ready", processor="analytics") is None


@pytest_asyncio.fixture(loop_scope="session")
async def pg_proxy(stack: Settings) -> AsyncIterator[FaultProxy]:
    """A proxy to PostgreSQL whose connections a test can cut."""
    proxy = await FaultProxy(*host_port(stack.database_url, 5432)).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_a_processor_is_not_ready_while_postgres_is_away(
    stack: Settings, pg_proxy: FaultProxy
) -> None:
    settings = dataclasses.replace(
        stack, database_url=with_port(stack.database_url, pg_proxy.host, pg_proxy.port)
    )
    pool = await open_pool(settings)
    metrics = Metrics()
    stop = asyncio.Event()
    task = asyncio.create_task(
        supervise("notifier", PROCESSORS["notifier"], settings, pool, metrics, stop)
    )

    async def ready_is(value: float) -> bool:
        return processor_ready(metrics, "notifier") == value

    try:
        await until(lambda: ready_is(1.0))
        await pg_proxy.close()
        await until(lambda: ready_is(0.0))
        await pg_proxy.heal()
        await until(lambda: ready_is(1.0))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()
    assert await ready_is(0.0)  # stopped


async def test_projector_lag_in_seconds_grows_while_it_cannot_apply(
    lane: Lane,  # noqa: F811 - the imported fixture
    pg_proxy: FaultProxy,
) -> None:
    t = lane.tenant
    settings = dataclasses.replace(
        lane.settings,
        database_url=with_port(lane.settings.database_url, pg_proxy.host, pg_proxy.port),
    )
    await lane.produce([created(t), upsert(t, 1, 1)])
    pool = await open_pool(settings)
    metrics = Metrics()
    stop = asyncio.Event()
    task = asyncio.create_task(
        supervise("projector", PROCESSORS["projector"], settings, pool, metrics, stop)
    )

    def lag() -> float:
        text = generate_latest(metrics.registry).decode()
        value = sample(text, "eventfold_processor_lag_seconds", processor="projector")
        assert value is not None
        return value

    async def applied(n: int) -> bool:
        # Counted on the lane's own pool, which does not go through the proxy.
        try:
            count: int = await lane.scalar(f'SELECT count(*) FROM "t_{t}".events')
        except asyncpg.UndefinedTableError:
            return False  # tenant.created not applied yet
        return count == n and lag() == 0.0

    try:
        await until(lambda: applied(2))
        assert processor_ready(metrics, "projector") == 1.0

        # PostgreSQL goes away: the next event is read but cannot be applied.
        await pg_proxy.close()
        producer = AIOKafkaProducer(bootstrap_servers=lane.settings.kafka_bootstrap)
        await producer.start()
        try:
            env = upsert(t, 2, 2)
            sent_from = time.time()
            await producer.send_and_wait(
                lane.settings.events_topic, orjson.dumps(env), key=f"{t}/{env['subject']}".encode()
            )
            sent_by = time.time()
        finally:
            await producer.stop()

        async def stuck_for_a_while() -> bool:
            return lag() > 1.0

        await until(stuck_for_a_while)
        # Read when scraped: the age of that event (its log time), however long it waits.
        before = time.time()
        value = lag()
        after = time.time()
        assert before - sent_by <= value <= after - sent_from + 0.001  # log time in ms

        await pg_proxy.heal()
        await until(lambda: applied(3))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()
    assert processor_ready(metrics, "projector") == 0.0


async def test_dead_letter_count_follows_a_redrive_by_the_api(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The projector reads the count again every DEAD_LETTER_REFRESH_SECONDS (30 s): quicker here.
    monkeypatch.setattr(projector_module, "DEAD_LETTER_REFRESH_SECONDS", 0.5)
    consumer = f"{api.settings.consumer_group_prefix}.projector"

    async def stored() -> int:
        async with pool.acquire() as conn:
            return await deadletters.count(conn, consumer)

    async def reported() -> float | None:
        return sample(await scrape(api), "eventfold_dlq_size", processor="projector")

    async def in_step() -> float | None:
        value, now = await reported(), await stored()
        return value if value == now else None

    await install_bug(pool, tenant.id)
    await tenant.write("PUT", f"{R}/p1", json={"n": 1})
    await tenant.write("PATCH", f"{R}/p1", json={"poison": True}, headers=MERGE)
    fine = await tenant.write("PUT", f"{R}/p2", json={"n": 2})
    await tenant.read_json(f"{R}/p2", fine["consistency_token"])
    parked = await until(lambda: _at_least(in_step, 1))

    async with pool.acquire() as conn:
        await conn.execute(f'DROP TRIGGER boom ON "t_{tenant.id}".records')
    resp = await tenant.call("POST", "/dead-letters/redrive", roles=("admin",), json={})
    assert (await resp.json())["applied"] == 1
    # The API redrove it, not the projector: the gauge still follows, from PostgreSQL.
    await until(lambda: _equals(in_step, parked - 1))


async def _at_least(read: Callable[[], Awaitable[float | None]], n: float) -> float | None:
    value = await read()
    return value if value is not None and value >= n else None


async def _equals(read: Callable[[], Awaitable[float | None]], n: float) -> bool:
    return await read() == n


async def test_disabled_webhook_endpoints_are_counted(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    async def stored() -> int:
        value: int = await pool.fetchval(
            "SELECT count(*) FROM eventfold.webhooks"
            " WHERE disabled_at IS NOT NULL AND deleted_at IS NULL"
        )
        return value

    async def in_step() -> float | None:
        value = sample(await scrape(api), "eventfold_webhook_endpoints_disabled")
        return value if value == await stored() else None

    receiver = Receiver()
    await receiver.start()
    try:
        receiver.decide = lambda _id, _n: 410
        hook = await subscribe(tenant, receiver.url, ["record.upserted"])
        await put(tenant, "g", 1)

        async def ours_disabled() -> bool:
            value: bool = await pool.fetchval(
                "SELECT disabled_at IS NOT NULL FROM eventfold.webhooks WHERE id = $1", hook["id"]
            )
            return value

        await until(ours_disabled)
        counted = await until(lambda: _at_least(in_step, 1))
        # Deleted, it is no longer a dead endpoint anyone can fix.
        resp = await tenant.call("DELETE", f"/webhooks/{hook['id']}", roles=("admin",))
        assert resp.status == 202, await resp.text()
        await until(lambda: _equals(in_step, counted - 1))
    finally:
        await receiver.stop()


async def test_top_tenants_are_the_busiest_only_and_replaced_each_window(
    api: Api, tenant: TenantApi
) -> None:
    metrics = api.client.app[METRICS]
    tops = (metrics.top_tenant_events, metrics.top_tenant_requests)
    saved = [top.window for top in tops]
    for top in tops:
        top.window = 0.0  # every scrape ends a window
    try:
        first_sent = time.monotonic()
        await scrape(api)
        first_back = time.monotonic()
        for i in range(5):
            last = await tenant.write("PUT", f"{R}/r{i}", json={"i": i})
        await tenant.read_json(f"{R}/r4", last["consistency_token"])
        missing = await tenant.read(f"{R}/nope")
        assert missing.status == 404  # refused: not counted
        second_sent = time.monotonic()
        text = await scrape(api)
        second_back = time.monotonic()

        # 5 events applied, 6 requests answered (5 PUTs and a GET), over the window.
        longest, shortest = second_back - first_sent, second_sent - first_back
        for name, count in (
            ("eventfold_top_tenant_events_per_second", 5),
            ("eventfold_top_tenant_requests_per_second", 6),
        ):
            rate = sample(text, name, tenant=tenant.id)
            assert rate is not None, name
            assert count / longest <= rate <= count / shortest, name
            assert len(samples(text, name)) <= tops[0].size

        # A window without its activity drops the tenant: the label set is replaced.
        again = await scrape(api)
        assert sample(again, "eventfold_top_tenant_events_per_second", tenant=tenant.id) is None
        assert sample(again, "eventfold_top_tenant_requests_per_second", tenant=tenant.id) is None
    finally:
        for top, window in zip(tops, saved, strict=True):
            top.window = window
