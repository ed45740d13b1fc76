"""One slow tenant does not stall the others: its events are deferred, then retried in order."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from eventfold.clients import open_pool
from eventfold.settings import Settings
from tests.integration.conftest import Api, TenantApi

R = "/collections/orders/records"
EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


@pytest_asyncio.fixture(loop_scope="session")
async def quick(stack: Settings) -> AsyncIterator[Api]:
    """An app of its own (topic, group) whose projector gives each tenant 300 ms."""
    run = uuid.uuid4().hex[:6]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.slow-{run}",
        dlq_topic=f"{stack.dlq_topic}.slow-{run}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.slow-{run}",
        projector_tenant_budget_ms=300,
    )
    await ensure_topics(settings)
    # The projector alone: the behaviour under test is its deferral of a locked tenant.
    app = create_app(settings, Parts(processors=("projector",)))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, settings)
    finally:
        await client.close()


async def test_a_locked_tenant_is_deferred_and_caught_up_in_order(quick: Api) -> None:
    slow = TenantApi(quick, (await quick.create_tenant())["id"])
    fast = TenantApi(quick, (await quick.create_tenant())["id"])
    await slow.write("PUT", f"{R}/a", json={"n": 0})  # its table exists and is projected

    pool = await open_pool(quick.settings)
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    try:
        # Someone holds the slow tenant's table: every write to it would wait.
        await locker.execute(f'LOCK TABLE "t_{slow.id}".records IN ACCESS EXCLUSIVE MODE')
        first = await slow.write(
            "PATCH",
            f"{R}/a",
            json={"n": 1},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        for i in range(5):
            w = await fast.write("PUT", f"{R}/f{i}", json={"i": i})
            # The other tenant is read back, consistent, while the slow one is locked.
            doc = await fast.read_json(f"{R}/f{i}", w["consistency_token"])
            assert doc["data"] == {"i": i}
        second = await slow.write(
            "PATCH",
            f"{R}/a",
            json={"n": 2, "late": True},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        env = {
            **os.environ,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": quick.settings.consumer_group_prefix,
        }
        listed = await asyncio.to_thread(
            subprocess.run,
            [EVENTFOLD, "dlq", "list", "--tenant", slow.id, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        rows = json.loads(listed.stdout)
        assert [r["event_id"] for r in rows] == [first["event_id"], second["event_id"]]
        assert rows[0]["error"].startswith("deferred:")
        # Still locked: a read with the token cannot be served consistent (503, not stale).
        stale = await slow.read(f"{R}/a", second["consistency_token"])
        assert stale.status == 503
    finally:
        await lock.rollback()
        await pool.release(locker)
        await pool.close()

    # Lock gone: the background retry applies both patches, in order. Its backoff may
    # outlast one token read's wait: the read is repeated as a client does on 503.
    doc = await read_when_caught_up(slow, f"{R}/a", second["consistency_token"])
    assert (doc["version"], doc["data"]) == (3, {"n": 2, "late": True})
    history = await slow.read_json("/events?subject=orders/a")
    assert [e["status"] for e in history["items"]] == ["applied"] * 3


async def read_when_caught_up(tenant: TenantApi, rest: str, token: str) -> Any:
    """Read with ``token``, following ``Retry-After`` on 503 (for up to a minute)."""
    async with asyncio.timeout(60):
        while True:
            resp = await tenant.read(rest, token)
            if resp.status != 503:
                assert resp.status == 200, await resp.text()
                return await resp.json()
            await asyncio.sleep(float(resp.headers["Retry-After"]))
