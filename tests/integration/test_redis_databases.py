"""Redis: the state that must not vanish and the evictable record cache are kept apart.

Rate-limit buckets and dedup keys go to ``EVENTFOLD_REDIS_URL`` (a server that never
evicts); record entries and hot keys to ``settings.cache_url`` (by default the next
database of that server; in a deployment a server of its own with ``allkeys-lru``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from eventfold.appkeys import CACHE
from eventfold.cache import HOT_TENANTS_KEY, hot_key, record_key
from eventfold.dedup import dedup_key
from eventfold.ratelimit import bucket_key
from tests.integration.conftest import Api, TenantApi

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(api: Api) -> TenantApi:
    """A tenant whose rate-limit bucket lives a while (burst / rate + 1 s: 11 s) once used."""
    doc = await api.create_tenant(limits={"requests_per_second": 100, "burst": 1000})
    return TenantApi(api, doc["id"])


@pytest_asyncio.fixture(loop_scope="session")
async def dbs(api: Api) -> AsyncIterator[tuple[Redis, Redis]]:
    """Plain clients of the state database and of the cache's."""
    settings = api.settings
    assert settings.cache_url != settings.redis_url
    state, cache = Redis.from_url(settings.redis_url), Redis.from_url(settings.cache_url)
    try:
        yield state, cache
    finally:
        await state.aclose()
        await cache.aclose()


async def keys(client: Redis, tenant: str) -> set[str]:
    return {key.decode() async for key in client.scan_iter(match=f"ef:{tenant}:*")}


async def test_state_keys_land_in_the_state_database_and_cache_keys_in_the_cache(
    tenant: TenantApi, dbs: tuple[Redis, Redis]
) -> None:
    state, cache = dbs
    written = await tenant.write("PUT", "/collections/orders/records/o1", json={"n": 1})
    await tenant.read_json("/collections/orders/records/o1", written["consistency_token"])
    entry = record_key(tenant.id, "orders", "o1")
    async with asyncio.timeout(90):  # filled by the read, or refreshed by the cache processor
        while not await cache.exists(entry):
            await asyncio.sleep(0.05)
    for _ in range(3):  # reads through the cache: counted as hot keys
        await tenant.read_json("/collections/orders/records/o1")
    await tenant.api.client.server.app[CACHE].flush_hot()

    in_state, in_cache = await keys(state, tenant.id), await keys(cache, tenant.id)
    must_stay = {bucket_key(tenant.id), dedup_key(tenant.id, written["event_id"])}
    evictable = {entry, hot_key(tenant.id)}
    assert must_stay <= in_state, in_state
    assert evictable <= in_cache, in_cache
    assert not in_state & evictable
    assert not in_cache & must_stay
    assert not any(":rec:" in key for key in in_state)
    assert await cache.zscore(HOT_TENANTS_KEY, tenant.id) is not None
    assert await state.zscore(HOT_TENANTS_KEY, tenant.id) is None
