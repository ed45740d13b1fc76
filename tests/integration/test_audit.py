"""The audit trail: every accepted event names its actor, which no client can set."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.conftest import Api, TenantApi
from tests.integration.test_apikeys import create_key, with_key
from tests.integration.test_replay import eventfold

R = "/collections/notes/records"


def _event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"audit-{i}",
        "source": "test",
        "type": "record.upserted",
        "subject": f"notes/n{i}",
        "data": {"i": i},
        **extra,
    }


async def test_every_write_names_its_actor_and_a_forged_one_is_replaced(
    api: Api, tenant: TenantApi
) -> None:
    forged = await tenant.write("POST", "/events", json=_event(1, actor="user:root"))
    cmd = await tenant.write("PUT", f"{R}/n2", json={"x": 2})
    key = await create_key(tenant, "bot", ("writer",))
    by_key = await api.client.put(
        tenant.path(f"{R}/n3"),
        json={"x": 3},
        headers=with_key(key["key"], key["consistency_token"]),
    )
    assert by_key.status == 202, await by_key.text()
    key_write = await by_key.json()

    history = await tenant.read_json("/events?limit=100", key_write["consistency_token"])
    actor_of = {e["id"]: e.get("actor") for e in history["items"]}
    assert actor_of[forged["events"][0]["id"]] == "user:eventfold-cli"
    assert actor_of[cmd["event_id"]] == "user:eventfold-cli"
    assert actor_of[key_write["event_id"]] == f"apikey:{key['id']}"
    # The key's creation is the admin's act; the tenant's creation the platform admin's.
    assert all(actor is not None for actor in actor_of.values()), actor_of

    one = await tenant.read_json(f"/events/{forged['events'][0]['id']}")
    assert one["actor"] == "user:eventfold-cli"


async def test_history_filters_by_actor(api: Api, tenant: TenantApi) -> None:
    key = await create_key(tenant, "bot", ("writer",))
    headers = with_key(key["key"], key["consistency_token"])
    mine = await api.client.post(tenant.path("/events"), json=_event(7), headers=headers)
    assert mine.status == 202, await mine.text()
    theirs = await tenant.write("POST", "/events", json=_event(8))

    by_key = await tenant.read_json(
        f"/events?actor=apikey:{key['id']}", theirs["consistency_token"]
    )
    assert [e["id"] for e in by_key["items"]] == ["audit-7"]
    by_user = await tenant.read_json("/events?actor=user:eventfold-cli&type=record.upserted")
    assert [e["id"] for e in by_user["items"]] == ["audit-8"]
    nobody = await tenant.read_json("/events?actor=user:nobody")
    assert nobody["items"] == []
    bad = await tenant.read("/events?actor=")
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["path"] == "/actor"


async def test_cli_actions_are_audited_as_their_operator(api: Api, tenant: TenantApi) -> None:
    wrote = await tenant.write("PUT", "/collections/notes/records/n1", json={"x": 1})
    await tenant.read_json("/collections/notes/records/n1", wrote["consistency_token"])
    status, doc, err = await eventfold(
        api.settings, "--operator", "ann", "verify", "--tenant", tenant.id
    )
    assert status == 0, err
    assert doc["tenants"][0]["equal"] is True

    async def audited() -> list[dict[str, Any]]:
        page = await tenant.read_json("/events?actor=operator:ann")
        items: list[dict[str, Any]] = page["items"]
        return items

    async with asyncio.timeout(30):  # published by the command, projected meanwhile
        while not (items := await audited()):
            await asyncio.sleep(0.1)
    [event] = items
    assert (event["type"], event["status"]) == ("tenant.operator_action", "applied")
    assert event["data"]["action"] == "verify"
    assert event["data"]["details"]["equal"] is True
    assert event["subject"] == tenant.id


async def test_a_deleted_tenant_is_not_replayed(api: Api) -> None:
    gone = (await api.create_tenant())["id"]
    resp = await api.request("DELETE", f"/v1/tenants/{gone}")
    assert resp.status == 202, await resp.text()
    seen = await api.request(
        "GET",
        f"/v1/tenants/{gone}",
        headers={"X-Consistency-Token": (await resp.json())["consistency_token"]},
    )
    assert (await seen.json())["status"] == "deleted"
    status, doc, err = await eventfold(api.settings, "replay", "--tenant", gone)
    assert status == 0, err
    assert f"tenant {gone} was deleted: skipped" in err
    assert doc["tenants"] == []
