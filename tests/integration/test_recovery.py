"""Recovery without a human: restarts under load, and clients retrying across a gateway restart.

The restart test runs on a PRIVATE stack (its own Kafka, PostgreSQL and Redis
on other ports, data in a temporary folder), never on the shared one; select it
with ``-m recovery``. The gateway-restart test uses the session's stack.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from devstack.kafka import Kafka
from devstack.postgres import Postgres
from devstack.redis import Redis
from entrypoints.bootstrap import create_app
from eventfold.settings import Settings
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi
from tests.integration.private_stack import (
    BOUND,
    halt,
    private_stack,
    start,
    upserts,
    verify_exactly_once,
    writing,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def private() -> AsyncIterator[Settings]:
    """A second, managed stack on other ports with its data in a temporary folder."""
    async with private_stack() as private_settings:
        yield private_settings


async def _ready_reports(api: Api, check: str) -> None:
    """``/health/ready`` answers in time and names ``check`` as down (eventually)."""
    deadline = time.monotonic() + 10
    while True:
        resp = await asyncio.wait_for(api.client.get("/health/ready"), 2.5)
        body = await resp.json()
        if body["checks"].get(check, {}).get("status") == "down":
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


@pytest.mark.recovery
async def test_broker_postgres_and_redis_restarts_lose_no_acknowledged_write(
    private: Settings,
) -> None:
    settings = private
    async with writing(settings) as (api, load):
        await load.more_acks(30)

        kafka = Kafka(settings)
        await halt(kafka)
        await _ready_reports(api, "kafka")
        await start(kafka)
        await load.more_acks(30)

        postgres = Postgres(settings)
        await halt(postgres)
        await _ready_reports(api, "postgres")
        await asyncio.sleep(1)
        await start(postgres)
        await load.more_acks(30)

        redis = Redis(settings)
        await halt(redis)
        await _ready_reports(api, "redis")
        await load.more_acks(30)  # the dedup fails open: writes go on without Redis
        await start(redis)
        await load.more_acks(15)
        # Every part is ready again: a processor whose last round failed retries after
        # its backoff (up to 5 s), so readiness comes back, not at once.
        deadline = time.monotonic() + 30
        while (resp := await api.client.get("/health/ready")).status != 200:
            assert time.monotonic() < deadline, await resp.text()
            await asyncio.sleep(0.2)


async def test_batches_resent_across_a_gateway_restart_have_one_effect_each(
    stack: Settings,
) -> None:
    batches = {
        f"g{uuid.uuid4().hex[:6]}-{b}": upserts(f"gw{b}-{os.getpid()}", 10) for b in range(24)
    }
    for key, batch in batches.items():
        for ev in batch:
            ev["id"] = f"{key}-{ev['id']}"
            ev["subject"] = f"things/{ev['id']}"

    first: TestClient[Any, Any] = TestClient(TestServer(create_app(stack, SESSION_PARTS)))
    await first.start_server()
    api = Api(first, stack)
    tenant_id = (await api.create_tenant())["id"]
    sem = asyncio.Semaphore(4)
    done = asyncio.Event()
    answered: list[int] = []

    async def send(client: TestClient[Any, Any], batch: list[dict[str, Any]]) -> int:
        async with sem:
            try:
                resp = await asyncio.wait_for(
                    TenantApi(Api(client, stack), tenant_id).call("POST", "/events", json=batch),
                    BOUND,
                )
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                return 0  # the gateway went away under this request
            answered.append(resp.status)
            if len(answered) >= len(batches) // 2:
                done.set()
            return resp.status

    sends = [asyncio.create_task(send(first, b)) for b in batches.values()]
    await asyncio.wait_for(done.wait(), BOUND)
    await first.close()  # the gateway stops with requests in flight
    statuses = await asyncio.gather(*sends)
    assert 202 in statuses
    assert any(s != 202 for s in statuses), "the restart came too late to interrupt anything"

    second: TestClient[Any, Any] = TestClient(TestServer(create_app(stack, SESSION_PARTS)))
    await second.start_server()
    try:
        tenant = TenantApi(Api(second, stack), tenant_id)
        acked: dict[str, str] = {}
        for batch in batches.values():  # every batch again, same ids
            resp = await asyncio.wait_for(tenant.call("POST", "/events", json=batch), BOUND)
            assert resp.status == 202, await resp.text()
            body = await resp.json()
            for ev in batch:
                acked[ev["id"]] = body["consistency_token"]
        await verify_exactly_once(tenant, acked)
    finally:
        await second.close()
