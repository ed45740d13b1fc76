"""Tenant lifecycle (platform-admin): change, suspend, resume and delete, as ``tenant.*`` events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson

from consumers.analytics.processor import Analytics
from eventfold import actors, cachefill
from eventfold.appkeys import CACHE, PUBLISHER
from eventfold.cache import HOT_TENANTS_KEY, cache_client, hot_key
from eventfold.clients import redis_client
from eventfold.envelope import CloudEvent
from eventfold.metrics import Metrics
from eventfold.publisher import consistency_token
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_apikeys import create_key, with_key
from tests.integration.test_erasure import make_personal

R = "/collections/notes/records"
#: How long a test waits for the session's cache processor (it refreshes the entries of
#: every test's writes; a purge or a fill waits behind them on a loaded machine).
CACHE_PROCESSOR_PATIENCE = 120.0


async def admin(api: Api, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    """A platform admin's call; returns the response."""
    headers = {"X-Consistency-Token": token} if token else {}
    return await api.request(method, path, headers=headers, **kw)


async def redis_keys(api: Api, pattern: str, *, state: bool = False) -> list[bytes]:
    """Keys matching ``pattern`` in the cache's Redis, or with ``state`` in the state's."""
    redis = redis_client(api.settings) if state else cache_client(api.settings)
    try:
        return [k async for k in redis.scan_iter(match=pattern, count=1000)]
    finally:
        await redis.aclose()


async def accepted(api: Api, method: str, path: str, **kw: Any) -> dict[str, Any]:
    resp = await admin(api, method, path, **kw)
    assert resp.status == 202, await resp.text()
    doc: dict[str, Any] = await resp.json()
    assert set(doc) == {"event_id", "consistency_token"}
    return doc


async def test_a_tenant_is_renamed_and_its_limits_change(api: Api, tenant: TenantApi) -> None:
    base = f"/v1/tenants/{tenant.id}"
    done = await accepted(
        api, "PATCH", base, json={"name": "Renamed", "limits": {"requests_per_second": 5}}
    )
    seen = await (await admin(api, "GET", base, done["consistency_token"])).json()
    assert seen["name"] == "Renamed"
    assert seen["limits"] == {"requests_per_second": 5.0, "burst": 200}
    assert seen["status"] == "active"
    event = await tenant.read_json(f"/events/{done['event_id']}")
    assert (event["type"], event["actor"]) == ("tenant.updated", "user:eventfold-cli")

    empty = await admin(api, "PATCH", base, json={})
    assert empty.status == 422
    bad = await admin(api, "PATCH", base, json={"name": ""})
    assert (await bad.json())["errors"][0]["path"] == "/name"
    by_tenant_admin = await tenant.call("PATCH", "", roles=("admin",), json={"name": "x"})
    assert by_tenant_admin.status == 403
    missing = await admin(api, "PATCH", "/v1/tenants/no_such_tenant_x", json={"name": "x"})
    assert missing.status == 404
    # Only the routes write tenant.* events: the raw events route refuses them.
    raw = await tenant.call(
        "POST",
        "/events",
        json={"specversion": "1.0", "id": "t-1", "source": "t", "type": "tenant.suspended",
              "subject": tenant.id, "data": {"reason": "self-inflicted"}},
    )  # fmt: skip
    assert raw.status == 422


async def test_a_suspended_tenant_reads_but_cannot_write_until_resumed(
    api: Api, tenant: TenantApi
) -> None:
    base = f"/v1/tenants/{tenant.id}"
    before = await tenant.write("PUT", f"{R}/n1", json={"v": 1})
    key = await create_key(tenant, "bot", ("writer",))
    done = await accepted(api, "POST", base + "/suspend", json={"reason": "invoice unpaid"})
    token = done["consistency_token"]

    shown = await (await admin(api, "GET", base, token)).json()
    assert (shown["status"], shown["reason"]) == ("suspended", "invoice unpaid")
    # Writes: 403 naming the reason, whoever writes (token, API key, platform admin).
    refused = await tenant.call("PUT", f"{R}/n2", json={"v": 2})
    assert refused.status == 403
    assert "invoice unpaid" in (await refused.json())["detail"]
    by_key = await api.client.put(
        tenant.path(f"{R}/n2"), json={"v": 2}, headers=with_key(key["key"], token)
    )
    assert by_key.status == 403
    assert (await admin(api, "PUT", tenant.path(f"{R}/n2"), json={"v": 2})).status == 403
    # Reads still answer.
    record = await tenant.read_json(f"{R}/n1", before["consistency_token"])
    assert record["data"] == {"v": 1}
    assert (await tenant.read(f"{R}/n2")).status == 404
    bad = await admin(api, "POST", base + "/suspend", json={})
    assert bad.status == 422

    resumed = await accepted(api, "POST", base + "/resume")
    shown = await (await admin(api, "GET", base, resumed["consistency_token"])).json()
    assert shown["status"] == "active"
    assert "reason" not in shown
    await tenant.write("PUT", f"{R}/n2", json={"v": 2})
    history = await tenant.read_json("/events?type=tenant.suspended")
    assert [e["data"] for e in history["items"]] == [{"reason": "invoice unpaid"}]


async def test_a_deleted_tenant_is_gone_for_good(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    base = f"/v1/tenants/{tenant.id}"
    # Its notes are personal: their data keys go with the tenant (the log unreadable).
    await make_personal(api, tenant, "notes")
    wrote = await tenant.write("PUT", f"{R}/n1", json={"v": 1})
    key = await create_key(tenant, "bot", ("writer",))
    hook = await tenant.call(
        "POST", "/webhooks", roles=("admin",),
        json={"url": "http://127.0.0.1:9/hook", "types": ["record.upserted"]},
        headers={"X-Consistency-Token": wrote["consistency_token"]},
    )  # fmt: skip
    assert hook.status in (201, 202), await hook.text()
    hook_doc = await hook.json()
    await tenant.read_json(f"{R}/n1", hook_doc["consistency_token"])
    # The cache processor fills the record's entry (the session's one works through
    # every test's writes: on a loaded machine it may run tens of seconds behind).
    async with asyncio.timeout(CACHE_PROCESSOR_PATIENCE):
        while not await redis_keys(api, f"ef:{tenant.id}:rec:*"):
            await asyncio.sleep(0.05)
    # The write left state behind too (its dedup memory), in the state's Redis.
    assert await redis_keys(api, f"ef:{tenant.id}:*", state=True)

    async with pool.acquire() as conn:
        keys_before = await conn.fetchval(
            "SELECT count(*) FROM eventfold.data_keys WHERE tenant = $1", tenant.id
        )
    assert keys_before == 1

    done = await accepted(api, "DELETE", base)
    token = done["consistency_token"]
    shown = await (await admin(api, "GET", base, token)).json()
    assert shown["status"] == "deleted"
    # Its credentials stop: tokens 403, API keys 401 (the key is gone).
    reader = await tenant.read(f"{R}/n1")
    assert reader.status == 403
    assert "deleted" in (await reader.json())["detail"]
    by_key = await api.client.get(tenant.path(f"{R}/n1"), headers=with_key(key["key"]))
    assert by_key.status == 401
    # Platform admins find nothing but the tombstone.
    assert (await admin(api, "GET", tenant.path(f"{R}/n1"))).status == 404
    assert (await admin(api, "GET", tenant.path("/events"))).status == 404
    assert (await admin(api, "POST", base + "/resume")).status == 404
    # The id is never created again.
    again = await admin(api, "POST", "/v1/tenants", json={"id": tenant.id, "name": "again"})
    assert again.status == 409
    assert "never used again" in (await again.json())["detail"]

    async with pool.acquire() as conn:
        schema = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"t_{tenant.id}"
        )
        left = {
            table: await conn.fetchval(
                f"SELECT count(*) FROM eventfold.{table} WHERE tenant = $1", tenant.id
            )
            for table in (
                "api_keys",
                "webhooks",
                "webhook_positions",
                "projection_versions",
                "data_keys",
            )
        }
        role = await conn.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", f"ef_t_{tenant.id}"
        )
    assert schema == 0
    assert left == dict.fromkeys(left, 0)
    assert role == 0
    # Every key of the tenant goes (cache, analytics, …), and stays gone.
    deadline = asyncio.get_running_loop().time() + CACHE_PROCESSOR_PATIENCE
    while left := await redis_keys(api, f"ef:{tenant.id}:*") + await redis_keys(
        api, f"ef:{tenant.id}:*", state=True
    ):
        assert asyncio.get_running_loop().time() < deadline, f"keys left: {sorted(left)[:20]}"
        await asyncio.sleep(0.05)

    # An event of the tenant still on its way (another partition) brings nothing back.
    late = CloudEvent.model_validate(
        {"specversion": "1.0", "id": "late-1", "source": "t", "type": "record.upserted",
         "subject": "notes/late", "data": {}, "tenant": tenant.id}
    )  # fmt: skip
    publisher = api.client.server.app[PUBLISHER]
    [landed] = await publisher.publish(tenant.id, [late], actor=actors.operator("test"))
    other = await api.create_tenant()
    probe = await admin(api, "GET", f"/v1/tenants/{other['id']}", consistency_token([landed]))
    assert probe.status == 200, await probe.text()
    async with pool.acquire() as conn:
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"t_{tenant.id}"
        )


async def test_writers_that_lag_behind_a_deletion_do_not_write_its_keys_again(
    api: Api, tenant: TenantApi
) -> None:
    """An API process's hot-key flush and the analytics worker's copy come after the purge."""
    gone = tenant
    kept = TenantApi(api, (await api.create_tenant())["id"])
    worker = Analytics(api.settings, None, Metrics())
    for n, who in enumerate((gone, kept)):
        wrote = await who.write("PUT", f"{R}/n1", json={"v": 1})
        await who.read_json(f"{R}/n1", wrote["consistency_token"])  # counted as a hot key
        event = {"id": wrote["event_id"], "tenant": who.id, "type": "record.upserted",
                 "subject": "notes/n1"}  # fmt: skip
        assert worker._count(orjson.dumps(event), 0, n, time.time()) == "counted"

    await cachefill.purge_tenants(api.settings, {gone.id})  # what the deletion's purge does
    await api.client.server.app[CACHE].flush_hot()
    state = redis_client(api.settings)
    try:
        await worker.flush(state, worker._dirty, worker._dirty_touched)
    finally:
        await state.aclose()

    # (Only the keys of the writers under test: the tenant is not really deleted here, so
    # the session's cache processor may still write its record's entry.)
    assert await redis_keys(api, hot_key(gone.id) + "*") == []
    assert await redis_keys(api, f"ef:{gone.id}:analytics:*", state=True) == []
    cache = cache_client(api.settings)
    try:
        assert await cache.zscore(HOT_TENANTS_KEY, gone.id) is None
        assert await cache.zscore(HOT_TENANTS_KEY, kept.id) is not None
    finally:
        await cache.aclose()
    assert await redis_keys(api, hot_key(kept.id))
    assert await redis_keys(api, f"ef:{kept.id}:analytics:*", state=True)
