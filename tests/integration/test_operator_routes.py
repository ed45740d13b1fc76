"""The public routes the console reads besides the contract's: who am I, tenants,
collections, newest-first history, dead letters with redrive, processor lag."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.integration.conftest import Api, TenantApi
from tests.integration.test_apikeys import create_key
from tests.integration.test_dead_letters import install_bug

R = "/collections/orders/records"
REDRIVE = "/dead-letters/redrive"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    doc: dict[str, Any] = await resp.json(content_type=None)
    return doc


async def test_me_names_the_credentials_of_a_token_and_of_an_api_key(
    api: Api, tenant: TenantApi
) -> None:
    resp = await api.client.get("/v1/me", headers=api.auth(tenant.id, "writer"))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {
        "subject": "eventfold-cli", "tenant": tenant.id, "roles": ["writer"],
        "platform_admin": False,
    }  # fmt: skip
    admin = await (await api.client.get("/v1/me", headers=api.auth("*", "platform-admin"))).json()
    assert (admin["tenant"], admin["platform_admin"]) == ("*", True)

    key = await create_key(tenant, "bot", ("reader",))
    resp = await api.client.get(
        "/v1/me", headers={"X-API-Key": key["key"], "X-Consistency-Token": key["consistency_token"]}
    )
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert (doc["tenant"], doc["roles"], doc["platform_admin"]) == (tenant.id, ["reader"], False)
    assert key["id"] in doc["subject"]

    missing = await problem(await api.client.get("/v1/me"), 401)
    assert missing["title"] == "Unauthorized"
    await problem(await api.client.get("/v1/me", headers={"Authorization": "Bearer x"}), 401)


async def test_tenants_list_pages_by_id_for_platform_admins_only(
    api: Api, tenant: TenantApi
) -> None:
    seen: list[str] = []
    after = None
    while True:
        query = "?limit=400" + (f"&after={after}" if after else "")
        resp = await api.request("GET", "/v1/tenants" + query)
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        seen += [t["id"] for t in doc["items"]]
        after = doc["next"]
        if after is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert tenant.id in seen
    mine = await (await api.request("GET", f"/v1/tenants/{tenant.id}")).json()
    page = await api.request("GET", f"/v1/tenants?limit=1&after={after_id(api, tenant)}")
    assert (await page.json())["items"] == [mine]

    resp = await api.client.get("/v1/tenants", headers=api.auth(tenant.id, "admin"))
    await problem(resp, 403)
    bad = await problem(await api.request("GET", "/v1/tenants?after=forged"), 422)
    assert bad["errors"][0]["path"] == "/after"


def after_id(api: Api, tenant: TenantApi) -> str:
    """A cursor just before ``tenant`` (the route's cursors are signed, so made the same way)."""
    from eventfold.cursors import CursorCodec

    return CursorCodec(api.settings.jwt_secret).encode("tenants", tenant.id[:-1])


async def test_collections_list_live_ones_by_name_in_pages(tenant: TenantApi) -> None:
    for collection in ("zeta", "alpha", "mid", "gone"):
        await tenant.write("PUT", f"/collections/{collection}/records/r1", json={"n": 1})
    await tenant.write("PUT", "/collections/alpha/records/r2", json={"n": 2})
    last = await tenant.write("DELETE", "/collections/gone/records/r1")
    await tenant.read_json("/collections/gone/records", last["consistency_token"])

    first = await tenant.read_json("/collections?limit=2")
    assert [c["name"] for c in first["items"]] == ["alpha", "mid"]
    rest = await tenant.read_json(f"/collections?limit=2&after={first['next']}")
    assert rest == {"items": [{"name": "zeta"}], "next": None}  # "gone" holds no live record
    await problem(await tenant.read("/collections?after=nope"), 422)


async def test_history_newest_first_with_its_own_cursor(tenant: TenantApi) -> None:
    ids = []
    for n in range(5):
        ids.append((await tenant.write("PUT", f"{R}/h{n}", json={"n": n}))["event_id"])
    last = await tenant.write("PATCH", f"{R}/h0", json={"m": 1}, headers=MERGE)
    ids.append(last["event_id"])
    await tenant.read_json(f"{R}/h0", last["consistency_token"])

    newest = await tenant.read_json("/events?order=-seq&limit=4&type=record.upserted")
    assert [e["id"] for e in newest["items"]] == ids[4:0:-1]
    older = await tenant.read_json(
        f"/events?order=-seq&limit=4&type=record.upserted&after={newest['next']}"
    )
    assert [e["id"] for e in older["items"]] == [ids[0]]
    assert older["next"] is None
    one = await tenant.read_json("/events?order=-seq&subject=orders/h0")
    assert [e["type"] for e in one["items"]] == ["record.patched", "record.upserted"]
    # A cursor of one order is refused by the other; an unknown order is a 422.
    oldest = await tenant.read_json("/events?limit=1")
    await problem(await tenant.read(f"/events?order=-seq&after={oldest['next']}"), 422)
    bad = await problem(await tenant.read("/events?order=seq2"), 422)
    assert bad["errors"] == [{"path": "/order", "message": "one of: seq, -seq"}]


async def test_dead_letters_are_listed_and_redriven_over_http(
    tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    await install_bug(pool, tenant.id)
    await tenant.write("PUT", f"{R}/p1", json={"n": 1})
    poison = await tenant.write("PATCH", f"{R}/p1", json={"poison": True}, headers=MERGE)
    behind = await tenant.write("PATCH", f"{R}/p1", json={"after": 1}, headers=MERGE)
    other = await tenant.write("PUT", f"{R}/p3", json={"poison": 1})
    fine = await tenant.write("PUT", f"{R}/p2", json={"n": 2})
    await tenant.read_json(f"{R}/p2", fine["consistency_token"])
    admin = ("admin",)

    await problem(await tenant.call("GET", "/dead-letters", roles=("writer",)), 403)
    page1 = await (await tenant.call("GET", "/dead-letters?limit=2", roles=admin)).json()
    assert [d["event_id"] for d in page1["items"]] == [poison["event_id"], behind["event_id"]]
    head, tail = page1["items"]
    assert (head["key"], head["type"], head["behind"], head["deferred"]) == (
        "orders/p1", "record.patched", None, False,
    )  # fmt: skip
    assert "boom: cannot store p1" in head["error"]
    assert head["event"]["data"] == {"poison": True}
    assert tail["behind"] == poison["event_id"]
    page2 = await (
        await tenant.call("GET", f"/dead-letters?limit=2&after={page1['next']}", roles=admin)
    ).json()
    assert [d["event_id"] for d in page2["items"]] == [other["event_id"]]
    assert page2["next"] is None

    # Before the fix a redrive applies nothing and says why.
    resp = await tenant.call(
        "POST", "/dead-letters/redrive", roles=admin, json={"key": "orders/p1"}
    )
    assert resp.status == 200, await resp.text()
    early = await resp.json()
    assert (early["applied"], early["still_parked"]) == (0, 2)
    assert [k["key"] for k in early["keys"]] == ["orders/p1"]
    assert "boom" in early["keys"][0]["error"]

    async with pool.acquire() as conn:
        await conn.execute(f'DROP TRIGGER boom ON "t_{tenant.id}".records')
    resp = await tenant.call(
        "POST", "/dead-letters/redrive", roles=admin, json={"key": "orders/p1"}
    )
    done = await resp.json()
    assert (done["applied"], done["rejected"], done["still_parked"]) == (2, 0, 0)
    p1 = await tenant.read_json(f"{R}/p1")
    assert (p1["version"], p1["data"]) == (3, {"n": 1, "poison": True, "after": 1})
    left = await (await tenant.call("GET", "/dead-letters", roles=admin)).json()
    assert [d["key"] for d in left["items"]] == ["orders/p3"]  # only the key asked for

    everything = await (
        await tenant.call("POST", "/dead-letters/redrive", roles=admin, json={})
    ).json()
    assert (everything["applied"], everything["still_parked"]) == (1, 0)
    again = await (await tenant.call("POST", "/dead-letters/redrive", roles=admin, json={})).json()
    assert again == {"applied": 0, "rejected": 0, "still_parked": 0, "keys": []}

    bad = await problem(
        await tenant.call("POST", "/dead-letters/redrive", roles=admin, json={"keys": []}), 422
    )
    assert bad["errors"][0]["path"] == "/keys"
    await problem(await tenant.call("GET", "/dead-letters?after=x", roles=admin), 422)


async def test_processor_lag_for_platform_admins(api: Api, tenant: TenantApi) -> None:
    written = await tenant.write("PUT", f"{R}/l1", json={"n": 1})
    await tenant.read_json(f"{R}/l1", written["consistency_token"])
    await problem(await api.client.get("/v1/processors", headers=api.auth(tenant.id, "admin")), 403)

    resp = await api.request("GET", "/v1/processors")
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    by_name = {p["name"]: p for p in doc["items"]}
    assert set(by_name) == {
        "projector", "cache", "archiver", "analytics", "notifier", "sync", "workflows"
    }  # fmt: skip
    assert doc["next"] is None
    prefix = api.settings.consumer_group_prefix
    projector = by_name["projector"]
    assert (projector["store"], projector["group"]) == ("postgres", f"{prefix}.projector")
    assert by_name["cache"]["store"] == "kafka"
    assert by_name["analytics"]["group"] == f"{prefix}-analytics"
    assert len(projector["partitions"]) == api.settings.topic_partitions
    for p in projector["partitions"]:
        assert p["lag"] == p["end"] - (p["position"] or 0) >= 0
    assert projector["lag"] == sum(p["lag"] for p in projector["partitions"])
    # The write above is projected: some partition's checkpoint is past it.
    assert any(p["position"] for p in projector["partitions"])
    for name in ("notifier", "sync", "workflows"):
        assert by_name[name]["lag"] is None
        assert by_name[name]["partitions"] == []
        assert isinstance(by_name[name]["backlog"], int)
