"""Read-your-writes: a read carrying a write's consistency token always sees that write."""

from __future__ import annotations

import asyncio

from eventfold.consistency import encode
from tests.integration.conftest import TenantApi

R = "/collections/counters/records"


async def test_write_then_read_never_misses(tenant: TenantApi) -> None:
    async def one(i: int) -> None:
        for v in range(1, 6):
            w = await tenant.write("PUT", f"{R}/c{i}", json={"v": v})
            doc = await tenant.read_json(f"{R}/c{i}", w["consistency_token"])
            assert doc["data"] == {"v": v}
            assert doc["version"] == v

    # Forty records spread over every partition, five write-read rounds each.
    await asyncio.gather(*(one(i) for i in range(40)))


async def test_token_the_projection_cannot_reach_is_503(tenant: TenantApi) -> None:
    resp = await tenant.read(R, encode({0: 10**12}))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.content_type == "application/problem+json"


async def test_malformed_token_is_400(tenant: TenantApi) -> None:
    for bad in ("nonsense", "ct1.!!!", "ct1.e30x"):
        resp = await tenant.read(R, bad)
        assert resp.status == 400, bad
