"""Integration fixtures: the whole app in-process (API, ingest, projector) on real services."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest_asyncio
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from entrypoints.registry import PROCESSORS
from eventfold.auth import issue_token
from eventfold.clients import open_pool
from eventfold.logs import JsonFormatter
from eventfold.settings import Settings
from tests.conftest import new_tenant_id
from tests.integration.workflow_helpers import receiver  # noqa: F401 - the workflows tests' fixture


@dataclass
class Api:
    """A test client with the session's secret, speaking the contract's routes.

    ``client`` is an in-process app's test client, or a client session whose
    ``base_url`` names a spawned HTTP process.
    """

    client: TestClient[Any, Any] | ClientSession
    settings: Settings

    def token(self, tenant: str, *roles: str, ttl: int = 600) -> str:
        return issue_token(self.settings.jwt_secret, tenant=tenant, roles=roles, ttl_seconds=ttl)

    def auth(self, tenant: str, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, *roles)}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        tenant: str = "*",
        roles: tuple[str, ...] = ("platform-admin",),
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> ClientResponse:
        all_headers = {**self.auth(tenant, *roles), **(headers or {})}
        return await self.client.request(method, path, headers=all_headers, **kw)

    async def create_tenant(self, tenant_id: str | None = None, **body: Any) -> dict[str, Any]:
        """Create a tenant and wait until it is projected; return the 202 body."""
        tenant_id = tenant_id or new_tenant_id()
        # Room for the bursts tests send; rate limit tests pass small limits.
        body.setdefault("limits", {"requests_per_second": 1_000_000, "burst": 1_000_000})
        resp = await self.request(
            "POST", "/v1/tenants", json={"id": tenant_id, "name": f"Tenant {tenant_id}", **body}
        )
        assert resp.status == 202, await resp.text()
        doc: dict[str, Any] = await resp.json()
        # Each read waits up to 5 s for the projection; a shared session projector
        # may still be working off an earlier test's burst, so allow a few waits.
        for _ in range(6):
            seen = await self.request(
                "GET",
                f"/v1/tenants/{tenant_id}",
                headers={"X-Consistency-Token": doc["consistency_token"]},
            )
            if seen.status != 503:
                break
        assert seen.status == 200, await seen.text()
        doc["id"] = tenant_id
        return doc


@dataclass
class TenantApi:
    """One fresh tenant and the calls a writer/reader of it makes."""

    api: Api
    id: str

    def path(self, rest: str) -> str:
        return f"/v1/tenants/{self.id}{rest}"

    async def call(
        self, method: str, rest: str, *, roles: tuple[str, ...] = ("writer",), **kw: Any
    ) -> ClientResponse:
        return await self.api.request(method, self.path(rest), tenant=self.id, roles=roles, **kw)

    async def write(self, method: str, rest: str, **kw: Any) -> dict[str, Any]:
        """A write that must be accepted (202); returns its body."""
        resp = await self.call(method, rest, **kw)
        assert resp.status == 202, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc

    async def read(self, rest: str, token: str | None = None, **kw: Any) -> ClientResponse:
        headers = {"X-Consistency-Token": token} if token else {}
        return await self.call("GET", rest, roles=("reader",), headers=headers, **kw)

    async def read_json(self, rest: str, token: str | None = None) -> Any:
        resp = await self.read(rest, token)
        assert resp.status == 200, await resp.text()
        return await resp.json()


#: What the session's app runs: every processor but analytics and sync. The faust
#: worker is tested in processes of its own (test_analytics), and one inside the
#: shared app kept the session's event loop from closing at the end of the run.
#: The sync runner is tested in apps with fast backoff (test_integrations): one in
#: the session app, with the default backoff and circuit (2 s … 120 s), claimed
#: their integrations now and then and made them wait far longer than the tests do.
SESSION_PROCESSORS = tuple(name for name in PROCESSORS if name not in ("analytics", "sync"))
#: The parts of every in-process test app that wants "everything".
SESSION_PARTS = Parts(processors=SESSION_PROCESSORS)
#: The read API alone: no ingest routes, no processors.
READ_API = Parts(api=True, ingest=False, processors=())


@contextlib.asynccontextmanager
async def serving(settings: Settings, parts: Parts) -> AsyncIterator[TestClient[Any, Any]]:
    """``create_app(settings, parts)`` on a real local server, with a client; closed after."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, parts)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def api(stack: Settings) -> AsyncIterator[Api]:
    """The app (API, ingest and the processors but analytics and sync) serving this session."""
    server = TestServer(create_app(stack, SESSION_PARTS))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        # Ready once every processor holds its partitions (as a load balancer would wait).
        async with asyncio.timeout(60):
            while (await (await client.get("/health/ready")).json())["status"] != "ok":
                await asyncio.sleep(0.1)
        yield Api(client, stack)
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pool(stack: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool opened as the app opens it (platform migration and role repair included)."""
    p = await open_pool(stack)
    try:
        yield p
    finally:
        await p.close()


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(api: Api) -> TenantApi:
    """A tenant created for this test alone."""
    doc = await api.create_tenant()
    return TenantApi(api, doc["id"])


@pytest_asyncio.fixture(loop_scope="session")
async def admin(stack: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A Kafka admin client of the session's stack."""
    client = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def lane(stack: Settings) -> Settings:
    """Settings with a private topic and consumer groups (a module may define its own)."""
    name = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.m-{name}",
        dlq_topic=f"{stack.dlq_topic}.m-{name}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.m-{name}",
    )
    await ensure_topics(settings)
    return settings


def process_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of an ``eventfold`` process spawned with ``settings``' topics and
    groups, serving HTTP on ``port``; ``extra`` adds variables."""
    return {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "EVENTFOLD_JWT_SECRET": settings.jwt_secret,
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_LOG_LEVEL": "WARNING",
        **extra,
    }


async def topic_records(settings: Settings, topic: str) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` (``settings.topic_partitions`` partitions), from each
    partition's start to its end when asked."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        async with asyncio.timeout(60):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    out += [m for m in msgs if m.offset < ends[tp]]
        return out
    finally:
        await consumer.stop()


_DEAD_MEMBER = textwrap.dedent(
    """
    import asyncio, sys
    from aiokafka import AIOKafkaConsumer

    async def main():
        consumer = AIOKafkaConsumer(
            sys.argv[2], bootstrap_servers=sys.argv[1], group_id=sys.argv[3],
            session_timeout_ms=10000, heartbeat_interval_ms=1000)
        await consumer.start()
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        print("assigned", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def kill_9_after_assignment(settings: Settings, group: str) -> None:
    """A consumer of ``group`` (not static) takes every partition of the events topic and is
    killed with -9: the group's next rebalance waits for its 10 s session to time out."""
    dead = subprocess.Popen(
        [sys.executable, "-c", _DEAD_MEMBER, settings.kafka_bootstrap, settings.events_topic,
         group],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert dead.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(dead.stdout.readline), 60)
        assert line == b"assigned\n"
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.wait()


class JsonLines(logging.Handler):
    """Formats records as the process would (JSON) and wakes a waiter on each."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))
        self.changed.set()


@contextlib.contextmanager
def captured(name: str, level: int = logging.INFO) -> Iterator[JsonLines]:
    """The JSON lines logger ``name`` writes at ``level`` or above, while in the block."""
    logger = logging.getLogger(name)
    handler, before = JsonLines(), logger.level
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
