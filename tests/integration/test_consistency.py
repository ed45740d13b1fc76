"""Read-your-writes: a read carrying a write's consistency token always sees that write.

A token no write produced is refused at once (400), credentials are checked
before any wait, and one tenant's waiting reads cannot fill the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from eventfold.appkeys import LOG_END, WAIT_SLOTS
from eventfold.consistency import decode, encode
from eventfold.errors import BadRequest
from eventfold.settings import Settings
from tests.integration.conftest import READ_API, Api, TenantApi, serving

R = "/collections/counters/records"


async def until(condition: Callable[[], bool], within: float = 30) -> None:
    """Wait until ``condition()`` holds (fails the test past ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_write_then_read_never_misses(tenant: TenantApi) -> None:
    async def one(i: int) -> None:
        for v in range(1, 6):
            w = await tenant.write("PUT", f"{R}/c{i}", json={"v": v})
            doc = await tenant.read_json(f"{R}/c{i}", w["consistency_token"])
            assert doc["data"] == {"v": v}
            assert doc["version"] == v

    # Forty records spread over every partition, five write-read rounds each.
    await asyncio.gather(*(one(i) for i in range(40)))


@pytest.mark.parametrize("positions", [{0: 10**12}, {0: 0, 1: 9 * 10**12}, {999: 0}])
async def test_token_past_the_end_of_the_log_is_400(
    tenant: TenantApi, positions: dict[int, int]
) -> None:
    resp = await tenant.read(R, encode(positions))
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json(content_type=None)
    assert problem["status"] == 400
    assert "end of the log" in problem["detail"]


async def test_malformed_token_is_400(tenant: TenantApi) -> None:
    for bad in ("nonsense", "ct1.!!!", "ct1.e30x"):
        resp = await tenant.read(R, bad)
        assert resp.status == 400, bad


@pytest_asyncio.fixture(loop_scope="session")
async def lagging(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """A read API whose projection never moves (it watches a projector that does not
    exist): every real write's token is within the log and never reached."""
    settings = dataclasses.replace(
        stack,
        consumer_group_prefix=f"{stack.consumer_group_prefix}-nobody",
        consistency_wait_seconds=5.0,
        consistency_waits_per_tenant=2,
    )
    async with serving(settings, READ_API) as client:
        yield client


async def test_token_the_projection_has_not_reached_is_503(
    api: Api, tenant: TenantApi, lagging: TestClient[Any, Any]
) -> None:
    written = await tenant.write("PUT", f"{R}/late", json={"v": 1})
    resp = await lagging.get(
        tenant.path(f"{R}/late"),
        headers={
            **api.auth(tenant.id, "reader"),
            "X-Consistency-Token": written["consistency_token"],
        },
    )
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert resp.content_type == "application/problem+json"


async def test_credentials_are_checked_before_any_wait(
    api: Api, tenant: TenantApi, lagging: TestClient[Any, Any]
) -> None:
    written = await tenant.write("PUT", f"{R}/c", json={"v": 1})
    real = written["consistency_token"]  # within the log, never reached by `lagging`
    forged = encode({0: 9 * 10**12})
    for headers in (
        {"X-API-Key": "efk_x_y", "X-Consistency-Token": real},
        {"X-API-Key": "efk_x_y", "X-Consistency-Token": forged},
        {"Authorization": "Bearer not-a-jwt", "X-Consistency-Token": real},
        {"X-API-Key": "efk_0123456789abcdef_" + "A" * 43, "X-Consistency-Token": forged},
    ):
        resp = await lagging.get(tenant.path(""), headers=headers)
        assert resp.status == 401, (headers, await resp.text())
        assert resp.headers["WWW-Authenticate"]
        assert resp.content_type == "application/problem+json"
    # Valid credentials with a forged token: refused as well, never waited on.
    resp = await lagging.get(
        tenant.path(""), headers={**api.auth(tenant.id, "reader"), "X-Consistency-Token": forged}
    )
    assert resp.status == 400, await resp.text()


async def test_a_tenants_concurrent_waits_are_capped(
    api: Api, tenant: TenantApi, lagging: TestClient[Any, Any]
) -> None:
    other = TenantApi(api, (await api.create_tenant())["id"])
    token = (await tenant.write("PUT", f"{R}/w", json={"v": 1}))["consistency_token"]

    def read(t: TenantApi) -> Awaitable[Any]:
        headers = {**api.auth(t.id, "reader"), "X-Consistency-Token": token}
        return asyncio.ensure_future(lagging.get(t.path(""), headers=headers))

    slots = lagging.app[WAIT_SLOTS]
    waiting = [read(tenant), read(tenant)]
    await until(lambda: slots.taken.get(tenant.id) == 2)
    refused = await read(tenant)
    assert refused.status == 429, await refused.text()
    assert refused.headers["Retry-After"] == "1"
    assert refused.content_type == "application/problem+json"
    assert "waiting" in (await refused.json(content_type=None))["detail"]
    # Another tenant's reads still wait their turn (the token is not theirs to reach
    # either: 503 once the wait is over, not 429).
    elsewhere = read(other)
    await until(lambda: slots.taken.get(other.id) == 1)
    for resp in await asyncio.gather(*waiting, elsewhere):
        assert resp.status == 503, await resp.text()
    assert slots.taken == {}


async def test_token_reads_do_not_ask_kafka_each_time(
    api: Api, tenant: TenantApi, stack: Settings
) -> None:
    # In the writing process, the publisher tells where the log reaches.
    ends = api.client.app[LOG_END]
    before = ends.refreshes
    for v in range(5):
        written = await tenant.write("PUT", f"{R}/k", json={"v": v})
        assert (await tenant.read_json(f"{R}/k", written["consistency_token"]))["data"] == {"v": v}
    assert ends.refreshes == before

    # A read API of its own learns the end from Kafka once a token passes what it
    # knows, never refusing a write it has not heard of yet.
    async with serving(stack, READ_API) as reader:
        own = reader.app[LOG_END]
        headers = api.auth(tenant.id, "reader")
        for v in range(3):
            token = (await tenant.write("PUT", f"{R}/k", json={"v": v}))["consistency_token"]
            for _ in range(5):
                resp = await reader.get(
                    tenant.path(f"{R}/k"), headers={**headers, "X-Consistency-Token": token}
                )
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["data"] == {"v": v}
        assert own.refreshes <= 3  # at most one per new token, none per repeated read

        # A flood of forged tokens shares refreshes: one in flight at a time.
        forged = decode(encode({0: 9 * 10**12}))
        before = own.refreshes
        outcomes = await asyncio.gather(
            *(own.verify(forged) for _ in range(100)), return_exceptions=True
        )
        assert all(isinstance(o, BadRequest) for o in outcomes), outcomes
        assert own.refreshes - before <= 2
