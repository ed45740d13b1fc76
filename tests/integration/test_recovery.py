"""Recovery without a human: restarts under load, and clients retrying across a gateway restart.

The restart test runs on a PRIVATE stack (its own Kafka, PostgreSQL and Redis
on other ports, data in a temporary folder), never on the shared one; select it
with ``-m recovery``. The gateway-restart test uses the session's stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from devstack import down_async, up_async
from devstack.base import Service
from devstack.kafka import Kafka
from devstack.postgres import Postgres
from devstack.process import live_pid, stop
from devstack.redis import Redis
from entrypoints.bootstrap import create_app
from eventfold.settings import Settings
from tests.conftest import free_port, free_port_pair, session_settings
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi

pytestmark = pytest.mark.integration
BOUND = 30.0


def _quiet(_line: str) -> None:
    """Infra progress lines are noise in a test log."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def private_stack() -> AsyncIterator[Settings]:
    """A second, managed stack on other ports with its data in a temporary folder."""
    shared = session_settings()
    home = Path(tempfile.mkdtemp(prefix="eventfold-recovery-"))
    # The templates of infra/ are read from the home; the Kafka jars are reused
    # read-only from the shared checkout instead of being fetched again.
    (home / "infra").symlink_to(shared.home / "infra")
    (home / "var" / "kafka").mkdir(parents=True)
    (home / "var" / "kafka" / "libs").symlink_to(shared.var_dir / "kafka" / "libs")
    settings = dataclasses.replace(
        shared,
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port_pair()}",
        database_url=f"postgresql://eventfold:eventfold@127.0.0.1:{free_port()}/eventfold",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        external=frozenset({"s3"}),  # not used here; the shared one is only probed
    )
    try:
        await up_async(settings, progress=_quiet)
        yield settings
    finally:
        await down_async(settings, progress=_quiet)
        shutil.rmtree(home, ignore_errors=True)


async def _halt(service: Service) -> None:
    pid = live_pid(service.pid_path, service.markers)
    assert pid is not None, f"{service.name} is not running"
    await stop(pid, sig=service.stop_signal, grace=service.stop_timeout)
    service.pid_path.unlink(missing_ok=True)


async def _start(service: Service) -> None:
    pid = await service.start(_quiet)
    await service.ready(pid, _quiet)


def _batch(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "specversion": "1.0",
            "id": f"{prefix}-{i}",
            "source": "recovery-test",
            "type": "record.upserted",
            "subject": f"things/{prefix}-{i}",
            "data": {"i": i},
        }
        for i in range(n)
    ]


@dataclass
class Load:
    """Writers sending batches with fixed ids, retrying each until it is accepted."""

    tenant: TenantApi
    acked: dict[str, str] = field(default_factory=dict)  # event id -> consistency token
    answers: dict[int, int] = field(default_factory=dict)  # status -> count
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, name: str) -> None:
        n = 0
        while not self.stop.is_set():
            batch = _batch(f"{name}-{n}", 5)
            while True:  # the same batch, same ids, until acknowledged
                try:
                    resp = await asyncio.wait_for(
                        self.tenant.call("POST", "/events", json=batch), BOUND
                    )
                    status = resp.status
                    body = await resp.json()
                except (aiohttp.ClientError, TimeoutError):
                    status, body = 0, {}
                self.answers[status] = self.answers.get(status, 0) + 1
                assert status in (0, 202, 503), body
                if status == 202:
                    for ev in batch:
                        self.acked[ev["id"]] = body["consistency_token"]
                    break
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.3)
            n += 1
            await asyncio.sleep(0.05)

    async def more_acks(self, count: int, within: float = 60.0) -> None:
        """Wait until ``count`` more events are acknowledged (the system recovered)."""
        target = len(self.acked) + count
        deadline = time.monotonic() + within
        while len(self.acked) < target:
            assert time.monotonic() < deadline, f"no progress: {self.answers}"
            await asyncio.sleep(0.1)


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


async def _verify_exactly_once(tenant: TenantApi, acked: dict[str, str]) -> None:
    """Every acknowledged event readable with its token, applied once (version 1)."""
    sem = asyncio.Semaphore(8)

    async def check(event_id: str, token: str) -> None:
        async with sem:
            deadline = time.monotonic() + 60
            while True:
                resp = await asyncio.wait_for(
                    tenant.read(f"/collections/things/records/{event_id}", token), BOUND
                )
                if resp.status == 200:
                    doc = await resp.json()
                    assert doc["version"] == 1, doc
                    return
                assert resp.status == 503, await resp.text()
                assert time.monotonic() < deadline, f"{event_id} never became readable"
                await asyncio.sleep(0.5)

    await asyncio.gather(*(check(i, t) for i, t in acked.items()))
    seen: list[str] = []
    after: str | None = None
    while True:
        query = "?limit=1000" + (f"&after={after}" if after else "")
        page = await tenant.read_json(f"/events{query}")
        seen += [item["id"] for item in page["items"] if item["type"] == "record.upserted"]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)), "an event is in the history twice"
    assert set(acked) <= set(seen)


@pytest.mark.recovery
async def test_broker_postgres_and_redis_restarts_lose_no_acknowledged_write(
    private_stack: Settings,
) -> None:
    settings = private_stack
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, SESSION_PARTS)))
    await client.start_server()
    try:
        api = Api(client, settings)
        tenant = TenantApi(api, (await api.create_tenant())["id"])
        load = Load(tenant)
        writers = [asyncio.create_task(load.writer(f"w{uuid.uuid4().hex[:4]}")) for _ in range(3)]
        try:
            await load.more_acks(30)

            kafka = Kafka(settings)
            await _halt(kafka)
            await _ready_reports(api, "kafka")
            await _start(kafka)
            await load.more_acks(30)

            postgres = Postgres(settings)
            await _halt(postgres)
            await _ready_reports(api, "postgres")
            await asyncio.sleep(1)
            await _start(postgres)
            await load.more_acks(30)

            redis = Redis(settings)
            await _halt(redis)
            await _ready_reports(api, "redis")
            await load.more_acks(30)  # the dedup fails open: writes go on without Redis
            await _start(redis)
            await load.more_acks(15)
        finally:
            load.stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
        print(f"answers {load.answers}, acknowledged {len(load.acked)}")
        await _verify_exactly_once(tenant, load.acked)
        # Every part is ready again: a processor whose last round failed retries after
        # its backoff (up to 5 s), so readiness comes back, not at once.
        deadline = time.monotonic() + 30
        while (resp := await client.get("/health/ready")).status != 200:
            assert time.monotonic() < deadline, await resp.text()
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def test_batches_resent_across_a_gateway_restart_have_one_effect_each(
    stack: Settings,
) -> None:
    batches = {
        f"g{uuid.uuid4().hex[:6]}-{b}": _batch(f"gw{b}-{os.getpid()}", 10) for b in range(24)
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
        await _verify_exactly_once(tenant, acked)
    finally:
        await second.close()
