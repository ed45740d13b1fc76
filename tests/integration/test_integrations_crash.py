"""A sync runner SIGKILLed mid-run: the next one resumes; nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from entrypoints.bootstrap import Parts, create_app
from eventfold.settings import Settings
from tests.conftest import free_port
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_integrations import (
    Source,
    assert_no_duplicate_events,
    create,
    eventually,
    feed,
    history,
    records,
    sync_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def napi(stack: Settings) -> AsyncIterator[Api]:
    """The app without an in-process sync runner (the spawned ones do the syncing)."""
    settings = sync_settings(stack)
    parts = Parts(processors=("projector",))
    server = TestServer(create_app(settings, parts))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Api(client, settings)
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def source() -> AsyncIterator[Source]:
    src = Source(page_size=5, delay=0.05)
    app = web.Application()
    app.router.add_get("/items", src.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    src.url = str(server.make_url("/items"))
    try:
        yield src
    finally:
        await server.close()


def spawn(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "EVENTFOLD_SYNC_TICK_SECONDS": "0.1",
        "EVENTFOLD_SYNC_BACKOFF_BASE": "0.05",
        "EVENTFOLD_SYNC_REQUEST_TIMEOUT": "1",
        "EVENTFOLD_SYNC_LEASE_SECONDS": "3",
        # Each process serves its health and metrics: a port of its own.
        "EVENTFOLD_HTTP_PORT": str(free_port()),
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([EVENTFOLD, "process", "sync"], env=env)


async def test_runner_killed_mid_run_resumes_without_loss_or_duplicates(
    napi: Api, source: Source
) -> None:
    t = TenantApi(napi, (await napi.create_tenant())["id"])
    source.entries = feed(300)  # 60 pages, ~3 s of source time
    first = spawn(napi.settings)
    try:
        iid = (await create(t, source))["id"]

        async def mid_run() -> bool:
            return source.requests >= 15

        await eventually(mid_run, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    partial = len(await records(t))
    assert partial < 300, "the kill came too late to test anything"
    second = spawn(napi.settings)
    try:

        async def synced() -> bool:
            return await records(t) == source.snapshot()

        await eventually(synced, 90)
    finally:
        second.terminate()
        second.wait(20)
    assert_no_duplicate_events(source, await history(t))
    st = await t.call("GET", f"/integrations/{iid}", roles=("admin",))
    assert (await st.json())["cursor"] == "295"
