"""Per-tenant rate limits: a token bucket in Redis, 429 + Retry-After + RateLimit-* headers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from entrypoints.bootstrap import Parts, create_app
from eventfold import signing
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


@pytest_asyncio.fixture(loop_scope="session")
async def guarded(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """Read and write routes that allow 3 failed authentications per client address
    (no token comes back during a test), behind a trusted proxy at 127.0.0.1."""
    settings = dataclasses.replace(
        stack,
        auth_failure_burst=3,
        auth_failure_per_second=FROZEN,
        trusted_proxies=("127.0.0.1",),
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(api=True, ingest=True, processors=())))
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def client_at(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers of a request the trusted proxy forwards from ``address``."""
    return {"X-Forwarded-For": f"198.51.100.250, {address}", **(headers or {})}


async def assert_blocked(resp: ClientResponse) -> None:
    assert resp.status == 429, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert int(resp.headers["Retry-After"]) >= 1
    assert "failed authentication" in (await resp.json(content_type=None))["detail"]


async def test_failed_authentication_is_limited_per_client_address(
    api: Api, tenant: TenantApi, guarded: TestClient[Any, Any]
) -> None:
    path = tenant.path(R)
    good = api.auth(tenant.id, "reader")
    bad_keys = [{"X-API-Key": f"efk_{i:016x}_{'B' * 43}"} for i in range(3)]
    for headers in bad_keys:
        resp = await guarded.get(path, headers=client_at("203.0.113.7", headers))
        assert resp.status == 401, await resp.text()
    # The address is out of failures: refused before any credential is looked at,
    # working credentials included.
    await assert_blocked(await guarded.get(path, headers=client_at("203.0.113.7", good)))
    await assert_blocked(
        await guarded.get(path, headers=client_at("203.0.113.7", {"Authorization": "Bearer x"}))
    )
    # Other addresses are not concerned; requests that authenticate cost nothing.
    for _ in range(5):
        assert (await guarded.get(path, headers=client_at("203.0.113.8", good))).status == 200
    resp = await guarded.get(path, headers=client_at("203.0.113.8", {"Authorization": "Bearer x"}))
    assert resp.status == 401
    # Health stays reachable for the blocked address.
    assert (await guarded.get("/health/live", headers=client_at("203.0.113.7"))).status == 200
    # An IPv6 client is one /64: another address of it is blocked too.
    for i in range(3):
        resp = await guarded.get(path, headers=client_at(f"2001:db8:1:2::{i + 1}"))
        assert resp.status == 401
    await assert_blocked(await guarded.get(path, headers=client_at("2001:db8:1:2::ff", good)))
    metrics = await (await guarded.get("/metrics")).text()
    [line] = [x for x in metrics.splitlines() if x.startswith("eventfold_auth_blocked_total ")]
    assert float(line.split()[1]) >= 3


async def test_inbound_webhooks_are_limited(api: Api, guarded: TestClient[Any, Any]) -> None:
    tenant = await limited(api, FROZEN, 2)
    resp = await api.request(
        "POST",
        tenant.path("/integrations"),
        json={
            "kind": "http-poll",
            "url": "http://127.0.0.1:9/items",
            "collection": "things",
            "interval_seconds": 3600,
            "paused": True,
        },
    )
    assert resp.status == 202, await resp.text()
    created = await resp.json()
    seen = await api.request(
        "GET",
        tenant.path(f"/integrations/{created['id']}"),
        headers={"X-Consistency-Token": created["consistency_token"]},
    )
    assert seen.status == 200, await seen.text()
    path = tenant.path(f"/integrations/{created['id']}/webhook")

    # Verified webhooks are the tenant's traffic: they take from its bucket.
    statuses = []
    for i in range(3):
        body = orjson.dumps({"items": [{"id": f"w{i}", "n": i}]})
        signed = signing.signed_headers(created["webhook_secret"], f"msg_{i}", body)
        resp = await guarded.post(path, data=body, headers=client_at("203.0.113.20", signed))
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.headers["Retry-After"]
            assert resp.content_type == "application/problem+json"
    assert statuses == [200, 200, 429]

    # Bad signatures are failed authentications of their address ...
    body = orjson.dumps({"items": []})
    forged = signing.signed_headers(signing.new_secret(), "msg_x", body)
    for _ in range(3):
        resp = await guarded.post(path, data=body, headers=client_at("203.0.113.21", forged))
        assert resp.status == 401, await resp.text()
    await assert_blocked(
        await guarded.post(path, data=body, headers=client_at("203.0.113.21", forged))
    )
    # ... and so are webhooks to integrations that do not exist (each one a lookup).
    nowhere = tenant.path("/integrations/0123456789abcdef/webhook")
    for _ in range(3):
        resp = await guarded.post(nowhere, data=body, headers=client_at("203.0.113.22", forged))
        assert resp.status == 404, await resp.text()
    await assert_blocked(
        await guarded.post(nowhere, data=body, headers=client_at("203.0.113.22", forged))
    )
