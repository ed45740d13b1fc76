"""The event history: every event with its status, oldest first, and pending ones."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from consumers.projector.processor import Projector
from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from eventfold.clients import open_pool
from eventfold.metrics import Metrics
from tests.integration.conftest import Api, TenantApi


def ev(i: int, subject: str, type_: str = "record.upserted", **kw: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"h-{i}",
        "source": "test",
        "type": type_,
        "subject": subject,
        **kw,
    }


async def test_history_lists_oldest_first_with_filters_and_pages(tenant: TenantApi) -> None:
    batch = [
        ev(1, "docs/a", data={"x": 1}),
        ev(2, "docs/a", "record.patched", data={"y": 2}),
        ev(3, "docs/b", data={}),
        ev(4, "docs/a", "record.deleted"),
        ev(5, "docs/zz", "record.patched", data={"q": 1}),
    ]
    w = await tenant.write("POST", "/events", json=batch)
    everything = await tenant.read_json("/events?limit=1000", w["consistency_token"])
    ids = [e["id"] for e in everything["items"]]
    assert ids[0].startswith("tenant.created:")
    # Events of one subject keep their order; all five are there.
    assert [i for i in ids if i in {"h-1", "h-2", "h-4"}] == ["h-1", "h-2", "h-4"]
    assert set(ids[1:]) == {"h-1", "h-2", "h-3", "h-4", "h-5"}

    by_subject = await tenant.read_json("/events?subject=docs/a")
    assert [e["id"] for e in by_subject["items"]] == ["h-1", "h-2", "h-4"]
    assert all(e["status"] == "applied" for e in by_subject["items"])
    patched = await tenant.read_json("/events?type=record.patched")
    assert {e["id"] for e in patched["items"]} == {"h-2", "h-5"}
    rejected = next(e for e in patched["items"] if e["id"] == "h-5")
    assert rejected["status"] == "rejected"
    assert rejected["reason"] == "record does not exist"
    assert rejected["tenant"] == tenant.id

    seen: list[str] = []
    after = None
    while True:
        page = await tenant.read_json("/events?limit=2" + (f"&after={after}" if after else ""))
        seen += [e["id"] for e in page["items"]]
        after = page["next"]
        if not after:
            break
    assert seen == ids


async def test_one_event_and_unknown_event(tenant: TenantApi) -> None:
    w = await tenant.write("POST", "/events", json=ev(9, "docs/c", data={"k": "v"}))
    one = await tenant.read_json("/events/h-9", w["consistency_token"])
    assert one["data"] == {"k": "v"}
    assert one["status"] == "applied"
    assert "reason" not in one
    missing = await tenant.read("/events/nope")
    assert missing.status == 404


async def test_published_but_unprojected_event_is_pending(api: Api, tenant: TenantApi) -> None:
    # A gateway writing to a topic no projector reads yet: its events stay pending.
    side = dataclasses.replace(
        api.settings,
        events_topic=api.settings.events_topic + ".side",
        dlq_topic=api.settings.dlq_topic + ".side",
    )
    await ensure_topics(side)
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(side, Parts(api=True, ingest=True, processors=())))
    )
    await client.start_server()
    try:
        headers = api.auth(tenant.id, "writer")
        resp = await client.post(
            f"/v1/tenants/{tenant.id}/events",
            json=ev(7, "docs/p", data={"n": 7}),
            headers=headers,
        )
        assert resp.status == 202
        pending = await client.get(f"/v1/tenants/{tenant.id}/events/h-7", headers=headers)
        doc = await pending.json()
        assert (doc["status"], doc["data"]) == ("pending", {"n": 7})

        # The projector, run alone in burst mode, applies it and stops once caught up.
        pool = await open_pool(side)
        try:
            await Projector(side, pool, Metrics(), group=f"{side.consumer_group_prefix}.side").run(
                burst=True
            )
        finally:
            await pool.close()
        applied = await client.get(f"/v1/tenants/{tenant.id}/events/h-7", headers=headers)
        assert (await applied.json())["status"] == "applied"
    finally:
        await client.close()


async def test_history_keeps_the_envelope_as_written(tenant: TenantApi) -> None:
    # Stored as json (the log's text), not jsonb: keys come back in the writer's order.
    data = {"zeta": 1, "alpha": {"y": 2, "b": 3}}
    w = await tenant.write("POST", "/events", json=ev(21, "docs/order", data=data))
    one = await tenant.read("/events/h-21", w["consistency_token"])
    body = await one.text()
    assert body.index('"zeta"') < body.index('"alpha"')
    assert body.index('"y"') < body.index('"b"')


async def test_a_schema_built_with_a_jsonb_history_still_appends_and_reads(
    api: Api, tenant: TenantApi
) -> None:
    # Schemas built before the history envelope became json keep their jsonb column.
    pool = await open_pool(api.settings)
    try:
        await pool.execute(
            f'ALTER TABLE "t_{tenant.id}".events ALTER envelope TYPE jsonb USING envelope::jsonb'
        )
    finally:
        await pool.close()
    w = await tenant.write("POST", "/events", json=ev(22, "docs/legacy", data={"k": "v"}))
    one = await tenant.read_json("/events/h-22", w["consistency_token"])
    assert one["data"] == {"k": "v"}
    assert one["status"] == "applied"
    record = await tenant.read_json("/collections/docs/records/legacy")
    assert record["data"] == {"k": "v"}
