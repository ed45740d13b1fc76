"""API keys (CONTRACT.md): created by an admin, shown once, stored as a hash, listed, revoked."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from eventfold.apikeys import WATCHED_TTL, ApiKeyDirectory
from eventfold.db import create_pool
from eventfold.errors import Unauthorized
from eventfold.settings import Settings
from tests.integration.conftest import READ_API, Api, TenantApi, serving

pytestmark = pytest.mark.integration

KEYS = "/api-keys"
R = "/collections/things/records"


async def create_key(
    tenant: TenantApi, name: str = "ci", roles: tuple[str, ...] = ("reader",)
) -> dict[str, Any]:
    """Create a key as the tenant's admin; 201 with the key, shown this once."""
    resp = await tenant.call("POST", KEYS, roles=("admin",), json={"name": name, "roles": roles})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    doc: dict[str, Any] = await resp.json()
    assert set(doc) == {"id", "key", "consistency_token"}
    return doc


def with_key(key: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-API-Key": key}
    if token:
        headers["X-Consistency-Token"] = token
    return headers


async def test_key_lifecycle(api: Api, tenant: TenantApi) -> None:
    created = await create_key(tenant, "deploy bot", ("writer",))
    key = created["key"]
    assert key.startswith(f"efk_{created['id']}_")
    # The creating write's token makes the new key usable at once.
    resp = await api.client.get(tenant.path(R), headers=with_key(key, created["consistency_token"]))
    assert resp.status == 200, await resp.text()
    put = await api.client.put(tenant.path(f"{R}/k1"), json={"by": "key"}, headers=with_key(key))
    assert put.status == 202, await put.text()

    resp = await tenant.call("GET", KEYS, roles=("admin",))
    assert resp.status == 200
    doc = await resp.json()
    assert doc["next"] is None
    [item] = doc["items"]
    assert item["id"] == created["id"]
    assert item["name"] == "deploy bot"
    assert item["roles"] == ["writer"]
    assert item["revoked_at"] is None
    assert key not in (await resp.text())
    assert "hash" not in str(item)

    resp = await tenant.call("DELETE", f"{KEYS}/{created['id']}", roles=("admin",))
    assert resp.status == 202, await resp.text()
    revoked = await resp.json()
    resp = await api.client.get(tenant.path(R), headers=with_key(key, revoked["consistency_token"]))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("ApiKey")
    assert "revoked" in (await resp.json(content_type=None))["detail"]
    # Without the token too, now that this process heard of it.
    resp = await api.client.get(tenant.path(R), headers=with_key(key))
    assert resp.status == 401
    doc = await (await tenant.call("GET", KEYS, roles=("admin",))).json()
    assert doc["items"][0]["revoked_at"] is not None
    # Revoking again is one effect: accepted, same event.
    again = await tenant.call("DELETE", f"{KEYS}/{created['id']}", roles=("admin",))
    assert again.status == 202
    assert (await again.json())["event_id"] == revoked["event_id"]


async def test_key_roles_and_tenant_are_enforced(api: Api, tenant: TenantApi) -> None:
    reader = await create_key(tenant, "dash", ("reader",))
    headers = with_key(reader["key"], reader["consistency_token"])
    assert (await api.client.get(tenant.path(R), headers=headers)).status == 200
    resp = await api.client.put(tenant.path(f"{R}/x"), json={}, headers=headers)
    assert resp.status == 403
    resp = await api.client.get(tenant.path(KEYS), headers=headers)
    assert resp.status == 403  # listing keys needs admin
    other = await api.create_tenant()
    resp = await api.client.get(f"/v1/tenants/{other['id']}{R}", headers=headers)
    assert resp.status == 403
    # An API key belongs to one tenant: never a platform admin.
    resp = await api.client.post(
        "/v1/tenants", json={"id": "keyed_tenant", "name": "x"}, headers=headers
    )
    assert resp.status == 403


@pytest.mark.parametrize(
    "key",
    [
        "",
        "efk_",
        "not-a-key",
        "efk_0123456789abcdef_" + "A" * 43,  # well-formed, unknown
        "efk_0123456789ABCDEF_" + "A" * 43,
        "efk_0123456789abcdef_" + "A" * 44,
    ],
)
async def test_bad_keys_are_401(api: Api, tenant: TenantApi, key: str) -> None:
    resp = await api.client.get(tenant.path(R), headers={"X-API-Key": key})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"]
    assert resp.content_type == "application/problem+json"


async def test_right_id_wrong_secret_is_401(api: Api, tenant: TenantApi) -> None:
    created = await create_key(tenant)
    forged = created["key"][:-4] + ("AAAA" if not created["key"].endswith("AAAA") else "BBBB")
    resp = await api.client.get(
        tenant.path(R), headers=with_key(forged, created["consistency_token"])
    )
    assert resp.status == 401
    good = await api.client.get(tenant.path(R), headers=with_key(created["key"]))
    assert good.status == 200


async def test_only_admins_manage_keys(api: Api, tenant: TenantApi) -> None:
    for roles in (("reader",), ("writer",)):
        resp = await tenant.call("POST", KEYS, roles=roles, json={"name": "x", "roles": ["reader"]})
        assert resp.status == 403
        resp = await tenant.call("DELETE", f"{KEYS}/0123456789abcdef", roles=roles)
        assert resp.status == 403
    # A platform admin manages any tenant's keys.
    resp = await api.request("POST", tenant.path(KEYS), json={"name": "x", "roles": ["admin"]})
    assert resp.status == 201


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "x", "roles": ["platform-admin"]}, "/roles/0"),
        ({"name": "x", "roles": []}, "/roles"),
        ({"name": "", "roles": ["reader"]}, "/name"),
        ({"name": "a\x00b", "roles": ["reader"]}, "/name"),
        ({"roles": ["reader"]}, "/name"),
        ({"name": "x", "roles": ["reader"], "key": "mine"}, "/key"),
    ],
)
async def test_invalid_key_requests_are_422(
    tenant: TenantApi, body: dict[str, Any], path: str
) -> None:
    resp = await tenant.call("POST", KEYS, roles=("admin",), json=body)
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert path in [e["path"] for e in problem["errors"]]


async def test_unknown_key_id_is_404_on_revoke(api: Api, tenant: TenantApi) -> None:
    for key_id in ("0123456789abcdef", "nope", "x" * 300):
        resp = await tenant.call("DELETE", f"{KEYS}/{key_id}", roles=("admin",))
        assert resp.status == 404
    # Another tenant's key is not this tenant's to revoke.
    other = TenantApi(api, (await api.create_tenant())["id"])
    theirs = await create_key(other)
    resp = await tenant.call(
        "DELETE",
        f"{KEYS}/{theirs['id']}",
        roles=("admin",),
        headers={"X-Consistency-Token": theirs["consistency_token"]},
    )
    assert resp.status == 404


async def test_the_log_holds_only_the_hash(tenant: TenantApi) -> None:
    created = await create_key(tenant, "secretive", ("reader",))
    secret = created["key"].split("_", 2)[2]
    resp = await tenant.read(
        f"/events?type=apikey.created&subject=api_keys/{created['id']}",
        created["consistency_token"],
    )
    raw = await resp.read()
    assert secret.encode() not in raw
    assert created["key"].encode() not in raw
    [event] = orjson.loads(raw)["items"]
    assert event["status"] == "applied"
    assert event["data"]["secret_hash"] == "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    assert set(event["data"]) == {"id", "name", "roles", "secret_hash"}


@pytest.mark.parametrize("event_type", ["apikey.created", "apikey.revoked"])
async def test_writers_cannot_publish_key_events(tenant: TenantApi, event_type: str) -> None:
    forged = {
        "specversion": "1.0",
        "id": "forged-1",
        "source": "attacker",
        "type": event_type,
        "subject": "api_keys/0123456789abcdef",
        "data": {
            "id": "0123456789abcdef",
            "name": "mine",
            "roles": ["admin"],
            "secret_hash": "sha256:" + "0" * 64,
        },
    }
    resp = await tenant.call("POST", "/events", json=forged)
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert [e["path"] for e in problem["errors"]] == ["/type"]


async def test_listing_pages_through_keys(tenant: TenantApi) -> None:
    made = [await create_key(tenant, f"k{i}") for i in range(3)]
    token = made[-1]["consistency_token"]
    seen: list[str] = []
    after: str | None = None
    while True:
        query = f"{KEYS}?limit=2" + (f"&after={after}" if after else "")
        resp = await tenant.call(
            "GET", query, roles=("admin",), headers={"X-Consistency-Token": token}
        )
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        assert len(doc["items"]) <= 2
        seen += [item["id"] for item in doc["items"]]
        after = doc["next"]
        if after is None:
            break
    assert seen == sorted(k["id"] for k in made)
    resp = await tenant.call("GET", f"{KEYS}?after=forged", roles=("admin",))
    assert resp.status == 422


@pytest_asyncio.fixture(loop_scope="session")
async def second_instance(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """Another API process (read routes only, no processors): its own key cache."""
    async with serving(stack, READ_API) as client:
        yield client


async def test_revocation_reaches_another_instance_without_a_token(
    api: Api, tenant: TenantApi, second_instance: TestClient[Any, Any]
) -> None:
    created = await create_key(tenant, "shared", ("reader",))
    key = created["key"]
    # The other instance learns the key (and caches it: trusted for a minute).
    resp = await second_instance.get(
        tenant.path(R), headers=with_key(key, created["consistency_token"])
    )
    assert resp.status == 200
    assert (await second_instance.get(tenant.path(R), headers=with_key(key))).status == 200

    resp = await tenant.call("DELETE", f"{KEYS}/{created['id']}", roles=("admin",))
    assert resp.status == 202
    # Only the notification can drop its cached copy before the minute is over.
    deadline = time.monotonic() + 10
    while (await second_instance.get(tenant.path(R), headers=with_key(key))).status != 401:
        assert time.monotonic() < deadline, "the other instance still accepts the revoked key"
        await asyncio.sleep(0.05)


async def test_projection_stores_no_secret(tenant: TenantApi, stack: Settings) -> None:
    created = await create_key(tenant)
    await tenant.read("", created["consistency_token"])  # wait for the projection
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM eventfold.api_keys WHERE id = $1", created["id"])
    finally:
        await conn.close()
    assert row is not None
    assert row["tenant"] == tenant.id
    assert created["key"].split("_", 2)[2] not in str(dict(row))


async def test_known_keys_survive_a_flood_of_unknown_keys(
    tenant: TenantApi, stack: Settings
) -> None:
    created = await create_key(tenant)
    await tenant.read("", created["consistency_token"])  # projected
    pool = await create_pool(stack.database_url, max_size=4)
    directory = ApiKeyDirectory(stack.database_url, pool)
    await directory.start()
    try:
        # Listening (connecting forgets every cached key): a checked key is kept a minute.
        deadline = time.monotonic() + 30
        while directory.ttl != WATCHED_TTL:
            assert time.monotonic() < deadline, "the key listener did not connect"
            await asyncio.sleep(0.05)
        principal = await directory.authenticate(created["key"])
        assert principal.tenant == tenant.id

        # More made-up key ids than the directory remembers of anything (10,000) ...
        limit = asyncio.Semaphore(4)

        async def unknown(i: int) -> None:
            async with limit:
                with pytest.raises(Unauthorized):
                    await directory.authenticate(f"efk_{i:016x}_{'A' * 43}")

        await asyncio.gather(*(unknown(i) for i in range(10_050)))
        # ... and the known key is still answered from memory: the database is gone.
        await pool.close()
        assert await directory.authenticate(created["key"]) == principal
    finally:
        await directory.stop()
        pool.terminate()
