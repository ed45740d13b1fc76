"""Load shedding: past its limit of requests in flight, a process answers 503 at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient

from eventfold.appkeys import ADMISSION, METRICS
from eventfold.settings import Settings
from tests.integration.conftest import READ_API, TenantApi, serving


@pytest_asyncio.fixture(loop_scope="session")
async def small(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The read API alone, answering at most two requests at once, whose projection
    never moves (it watches a projector that does not exist)."""
    settings = dataclasses.replace(
        stack,
        http_max_in_flight=2,
        consistency_wait_seconds=3.0,
        consumer_group_prefix=f"{stack.consumer_group_prefix}-nobody",
    )
    async with serving(settings, READ_API) as client:
        yield client


async def test_requests_past_the_limit_are_shed_and_probes_still_answer(
    small: TestClient[Any, Any], tenant: TenantApi
) -> None:
    app = small.app
    assert app is not None
    reader = tenant.api.auth(tenant.id, "reader")
    record = tenant.path("/collections/notes/records/n1")
    # Two reads waiting for a write the projection will never reach hold both slots.
    written = await tenant.write("PUT", "/collections/other/records/o1", json={})
    never = {**reader, "X-Consistency-Token": written["consistency_token"]}
    holders = [asyncio.create_task(small.get(record, headers=never)) for _ in range(2)]
    async with asyncio.timeout(10):
        while app[ADMISSION].in_flight < 2:
            await asyncio.sleep(0.01)

    shed = await small.get(record, headers=reader)
    assert shed.status == 503
    assert shed.headers["Retry-After"] == "1"
    assert shed.content_type == "application/problem+json"
    assert "as many requests as it can" in (await shed.json())["detail"]
    assert app[METRICS].http_requests_shed._value.get() == 1
    for probe in ("/health/live", "/metrics", "/openapi.json"):
        assert (await small.get(probe)).status == 200, probe

    # The holders end on their own wait (not shed), and the slots are free again.
    for done in await asyncio.gather(*holders):
        assert done.status == 503
        assert "as many requests" not in (await done.json())["detail"]
    assert app[ADMISSION].in_flight == 0
    assert (await small.get(record, headers=reader)).status == 404
