"""Per-tenant rate limits: a token bucket in Redis, 429 + Retry-After + RateLimit-* headers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from eventfold.bootstrap import Parts, create_app
from eventfold.settings import Settings
from tests.faultproxy import FaultProxy
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_faults import host_port, with_port

pytestmark = pytest.mark.integration

R = "/collections/things/records"
#: Refills so slowly that no token comes back while a test runs.
FROZEN = 0.001


async def limited(api: Api, rps: float, burst: int) -> TenantApi:
    doc = await api.create_tenant(limits={"requests_per_second": rps, "burst": burst})
    return TenantApi(api, doc["id"])


async def test_burst_then_429_with_headers(api: Api) -> None:
    tenant = await limited(api, FROZEN, 3)
    remaining = []
    for _ in range(3):
        resp = await tenant.read(R)
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        remaining.append(int(resp.headers["RateLimit-Remaining"]))
        assert int(resp.headers["RateLimit-Reset"]) > 0
    assert remaining == [2, 1, 0]
    resp = await tenant.read(R)
    assert resp.status == 429
    assert resp.content_type == "application/problem+json"
    problem = await resp.json(content_type=None)
    assert problem["status"] == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["RateLimit-Remaining"] == "0"
    # Writes count against the same bucket.
    resp = await tenant.call("PUT", f"{R}/a", json={"a": 1})
    assert resp.status == 429


async def test_limits_are_per_tenant_and_spare_platform_admins(api: Api) -> None:
    tenant = await limited(api, FROZEN, 1)
    assert (await tenant.read(R)).status == 200
    assert (await tenant.read(R)).status == 429
    other = await limited(api, FROZEN, 1)
    assert (await other.read(R)).status == 200
    # A platform admin's requests are not the tenant's traffic.
    resp = await api.request("GET", tenant.path(R))
    assert resp.status == 200
    assert "RateLimit-Limit" not in resp.headers


async def test_concurrent_requests_never_share_a_token(api: Api) -> None:
    tenant = await limited(api, FROZEN, 20)
    answers = await asyncio.gather(*(tenant.read(R) for _ in range(60)))
    statuses = sorted(r.status for r in answers)
    assert statuses.count(200) == 20
    assert statuses.count(429) == 40


async def test_the_bucket_refills(api: Api) -> None:
    tenant = await limited(api, 20, 2)
    while (await tenant.read(R)).status == 200:
        pass
    deadline = time.monotonic() + 5
    while (resp := await tenant.read(R)).status == 429:
        assert time.monotonic() < deadline, "no token came back"
        await asyncio.sleep(int(resp.headers["Retry-After"]) / 20)
    assert resp.status == 200


async def test_api_keys_are_limited_too(api: Api) -> None:
    tenant = await limited(api, FROZEN, 2)
    resp = await api.request(
        "POST", tenant.path("/api-keys"), json={"name": "k", "roles": ["reader"]}
    )
    assert resp.status == 201  # a platform admin: not counted
    created = await resp.json()
    headers = {"X-API-Key": created["key"], "X-Consistency-Token": created["consistency_token"]}
    statuses = [(await api.client.get(tenant.path(R), headers=headers)).status for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest_asyncio.fixture(loop_scope="session")
async def redis_proxy(stack: Settings) -> AsyncIterator[tuple[FaultProxy, TestClient[Any, Any]]]:
    """An API instance whose Redis sits behind a fault proxy."""
    proxy = await FaultProxy(*host_port(stack.redis_url, 6379)).start()
    settings = dataclasses.replace(
        stack, redis_url=with_port(stack.redis_url, proxy.host, proxy.port)
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(api=True, ingest=False, processors=())))
    )
    await client.start_server()
    try:
        yield proxy, client
    finally:
        await client.close()
        await proxy.stop()


async def test_redis_down_fails_open_and_is_counted(
    api: Api, redis_proxy: tuple[FaultProxy, TestClient[Any, Any]]
) -> None:
    proxy, client = redis_proxy
    tenant = await limited(api, FROZEN, 2)
    headers = api.auth(tenant.id, "reader")
    statuses = [(await client.get(tenant.path(R), headers=headers)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    await proxy.close()
    for _ in range(5):
        resp = await client.get(tenant.path(R), headers=headers)
        assert resp.status == 200, await resp.text()
        assert "RateLimit-Limit" not in resp.headers
    metrics = await (await client.get("/metrics")).text()
    [line] = [
        x for x in metrics.splitlines() if x.startswith("eventfold_ratelimit_fail_open_total ")
    ]
    assert float(line.split()[1]) >= 5
