"""Tenant event types (issue 24) on the real stack: routes, compatibility, validation at
ingest, upcasting on read, fold and delivery, declarative projections, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse, ClientTimeout, web

from entrypoints.bootstrap import Parts
from eventfold.eventtypes.definitions import LATEST_TTL_SECONDS, type_exists
from tests.integration.conftest import Api, TenantApi, serving
from tests.integration.test_replay import verify_replay_verify
from tests.integration.workflow_helpers import finished, runs_of, wait_record, wait_run

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = ("admin",)
INVOICE_V1 = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string"},
        "amount": {"type": "number", "minimum": 0},
        "note": {"type": "string"},
    },
    "required": ["invoice_id", "amount"],
    "additionalProperties": False,
}
#: v2 renames amount to total (an upcast lifts v1 data) and adds an optional currency.
INVOICE_V2 = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "note": {"type": "string"},
        "currency": {"enum": ["EUR", "USD"]},
    },
    "required": ["invoice_id", "total"],
    "additionalProperties": False,
}
RENAME = [{"op": "rename", "from": "/amount", "path": "/total"}]


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/problem+json"), text
    doc: dict[str, Any] = orjson.loads(text)
    return doc


def paths(doc: dict[str, Any]) -> list[str]:
    return [e["path"] for e in doc.get("errors", [])]


async def register(t: TenantApi, **body: Any) -> dict[str, Any]:
    return await t.write("POST", "/event-types", json=body, roles=ADMIN)


async def add_version(t: TenantApi, name: str, token: str, **body: Any) -> ClientResponse:
    return await t.call(
        "PUT", f"/event-types/{name}", json=body, roles=ADMIN,
        headers={"X-Consistency-Token": token},
    )  # fmt: skip


async def publish(t: TenantApi, events: Any, token: str | None = None) -> ClientResponse:
    headers = {"X-Consistency-Token": token} if token else {}
    return await t.call("POST", "/events", json=events, headers=headers)


def event(type_: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "test/billing",
        "type": type_, "data": data, **extra,
    }  # fmt: skip


async def accepted(resp: ClientResponse) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == 202, text
    doc: dict[str, Any] = orjson.loads(text)
    return doc


async def history_of(t: TenantApi, event_id: str, token: str) -> dict[str, Any]:
    doc: dict[str, Any] = await t.read_json(f"/events/{event_id}", token)
    return doc


# -- routes ------------------------------------------------------------------


async def test_register_read_and_refuse(tenant: TenantApi) -> None:
    doc = await register(tenant, type="invoice.paid", schema=INVOICE_V1)
    assert doc["type"] == "invoice.paid"
    assert doc["version"] == 1
    assert doc["consistency_token"]
    token = doc["consistency_token"]

    listing = await tenant.read_json("/event-types", token)
    assert [i["type"] for i in listing["items"]] == ["invoice.paid"]
    assert listing["items"][0]["latest_version"] == 1
    assert listing["items"][0]["compatibility"] == "backward"
    assert listing["next"] is None
    one = await tenant.read_json("/event-types/invoice.paid", token)
    assert one["schema"] == INVOICE_V1
    assert [v["version"] for v in one["versions"]] == [1]
    version = await tenant.read_json("/event-types/invoice.paid/versions/1", token)
    assert version["schema"] == INVOICE_V1
    assert version["projection"] is None
    assert (await tenant.read("/event-types/invoice.paid/versions/2", token)).status == 404
    assert (await tenant.read("/event-types/invoice.void", token)).status == 404

    again = await tenant.call(
        "POST", "/event-types", json={"type": "invoice.paid", "schema": {}}, roles=ADMIN,
        headers={"X-Consistency-Token": token},
    )  # fmt: skip
    assert "PUT" in (await problem(again, 409))["detail"]

    # Names: dotted lower-case, no built-in prefix.
    for bad in ("record.custom", "eventtype.x", "workflow.started", "Invoice.Paid", "invoice"):
        resp = await tenant.call(
            "POST", "/event-types", json={"type": bad, "schema": {}}, roles=ADMIN
        )
        assert paths(await problem(resp, 422)) == ["/type"], bad
    # A schema that is not JSON Schema 2020-12, or references something remote: 422 with pointers.
    resp = await tenant.call(
        "POST", "/event-types", roles=ADMIN,
        json={"type": "invoice.bad", "schema": {"type": "objekt", "properties": {"a": {
            "$ref": "https://schemas.example/a.json"}}}},
    )  # fmt: skip
    doc = await problem(resp, 422)
    assert set(paths(doc)) == {"/schema/type", "/schema/properties/a/$ref"}, doc
    resp = await tenant.call(
        "POST", "/event-types", roles=ADMIN,
        json={"type": "invoice.bad", "schema": {"$ref": "#/$defs/missing"}},
    )  # fmt: skip
    assert paths(await problem(resp, 422)) == ["/schema"]
    # Writers may not register types; PUT of an unknown type is a 404.
    resp = await tenant.call(
        "POST", "/event-types", json={"type": "invoice.sent", "schema": {}}, roles=("writer",)
    )
    await problem(resp, 403)
    await problem(await add_version(tenant, "invoice.void", token, schema={}), 404)


async def test_compatibility_modes(tenant: TenantApi) -> None:
    base = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a"], "additionalProperties": False}  # fmt: skip
    add_required = {**base, "properties": {**base["properties"], "c": {"type": "string"}},
                    "required": ["a", "c"]}  # fmt: skip
    add_optional = {**base, "properties": {**base["properties"], "c": {"type": "string"}}}
    drop_b = {**base, "properties": {"a": {"type": "string"}}}
    narrowed = {**base, "properties": {"a": {"type": "string", "maxLength": 3},
                                       "b": {"type": "integer"}}}  # fmt: skip
    tokens: dict[str, str] = {}
    for mode in ("backward", "forward", "full", "none"):
        doc = await register(tenant, type=f"compat.{mode}", schema=base, compatibility=mode)
        tokens[mode] = doc["consistency_token"]

    # backward: a new required property breaks old data; an optional one (closed model) is fine.
    resp = await add_version(tenant, "compat.backward", tokens["backward"], schema=add_required)
    doc = await problem(resp, 409)
    assert doc["errors"] == [{"path": "/schema/required", "message": doc["errors"][0]["message"]}]
    assert "'c'" in doc["errors"][0]["message"]
    assert (await accepted(await add_version(tenant, "compat.backward", tokens["backward"],
                                             schema=add_optional)))["version"] == 2  # fmt: skip
    # forward: removing a property from a closed model breaks old readers of new data.
    resp = await add_version(tenant, "compat.forward", tokens["forward"], schema=drop_b)
    second = await accepted(resp)
    assert second["version"] == 2
    # Checked against the latest version, 2 (after its token: before it, the check could
    # see 1 and refuse c alone): version 2's closed model reads neither b nor c.
    resp = await add_version(
        tenant, "compat.forward", second["consistency_token"], schema=add_optional
    )
    assert sorted(paths(await problem(resp, 409))) == [
        "/schema/properties/b",
        "/schema/properties/c",
    ]
    # full: both directions; a narrowed bound is refused with its pointer.
    resp = await add_version(tenant, "compat.full", tokens["full"], schema=narrowed)
    assert paths(await problem(resp, 409)) == ["/schema/properties/a/maxLength"]
    resp = await add_version(tenant, "compat.full", tokens["full"], schema=add_required)
    assert "/schema/required" in paths(await problem(resp, 409))
    # none: anything goes; a PUT may also change the mode for the versions after it.
    resp = await add_version(tenant, "compat.none", tokens["none"], schema={"type": "string"})
    second = await accepted(resp)
    resp = await add_version(
        tenant, "compat.none", second["consistency_token"], schema={"type": "integer"},
        compatibility="backward",
    )  # fmt: skip
    assert paths(await problem(resp, 409)) == ["/schema/type"]
    listing = await tenant.read_json("/event-types?limit=2", second["consistency_token"])
    assert [i["type"] for i in listing["items"]] == ["compat.backward", "compat.forward"]
    rest = await tenant.read_json(f"/event-types?limit=2&after={listing['next']}")
    assert [i["type"] for i in rest["items"]] == ["compat.full", "compat.none"]


# -- validation at ingest ------------------------------------------------------


async def test_events_validate_against_latest_or_named_version(tenant: TenantApi) -> None:
    doc = await register(tenant, type="invoice.paid", schema=INVOICE_V1)
    # The very first event after the registration is accepted (its token waits, then reads afresh).
    first = await accepted(await publish(
        tenant, event("invoice.paid", {"invoice_id": "i1", "amount": 5}), doc["consistency_token"]
    ))  # fmt: skip
    resp = await publish(tenant, event("invoice.paid", {"invoice_id": "i1", "amount": -1}))
    assert paths(await problem(resp, 422)) == ["/data/amount"]
    v2 = await accepted(await add_version(
        tenant, "invoice.paid", first["consistency_token"], schema=INVOICE_V2, upcast=RENAME
    ))  # fmt: skip
    assert v2["version"] == 2
    token = v2["consistency_token"]
    # Latest (v2) by default: v1's shape is refused now, v2's accepted.
    resp = await publish(tenant, event("invoice.paid", {"invoice_id": "i2", "amount": 5}), token)
    assert set(paths(await problem(resp, 422))) == {"/data"}  # total missing, amount unknown
    ok = await accepted(
        await publish(tenant, event("invoice.paid", {"invoice_id": "i2", "total": 7}), token)
    )
    # A named version: v1's shape passes when dataschema names version 1.
    named = f"/v1/tenants/{tenant.id}/event-types/invoice.paid/versions/1"
    old = event("invoice.paid", {"invoice_id": "i3", "amount": 9}, dataschema=named)
    assert (await accepted(await publish(tenant, old, token)))["events"][0]["duplicate"] is False
    for bad, why in (
        (f"/v1/tenants/{tenant.id}/event-types/invoice.paid/versions/7", "no version 7"),
        ("https://elsewhere.example/schemas/invoice.json", "must name a version"),
        ("/v1/tenants/other_tenant/event-types/invoice.paid/versions/1", "another tenant"),
    ):
        resp = await publish(tenant, event("invoice.paid", {"invoice_id": "x"}, dataschema=bad))
        doc = await problem(resp, 422)
        assert paths(doc) == ["/dataschema"], doc
        assert why in doc["errors"][0]["message"], doc
    # An unregistered custom type: 422 naming the registration route. A batch is all or nothing.
    resp = await publish(tenant, [
        event("invoice.paid", {"invoice_id": "i4", "total": 1}),
        event("invoice.refunded", {"invoice_id": "i4"}),
    ])  # fmt: skip
    doc = await problem(resp, 422)
    assert paths(doc) == ["/1/type"]
    assert f"POST /v1/tenants/{tenant.id}/event-types" in doc["errors"][0]["message"]
    # The gateway stamps the version the data follows (and the one it is folded as).
    stored = await history_of(tenant, ok["events"][0]["id"], ok["consistency_token"])
    assert stored["status"] == "applied"
    assert stored["dataschema"].endswith("/event-types/invoice.paid/versions/2")
    assert stored["typeversion"] == 2


async def test_a_new_version_reaches_other_gateways_within_a_second(
    api: Api, tenant: TenantApi
) -> None:
    """Another gateway process (own cache, no projector) uses a version added elsewhere."""
    doc = await register(tenant, type="order.placed", schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False,
    })  # fmt: skip
    token = doc["consistency_token"]
    async with serving(api.settings, Parts(api=False, ingest=True, processors=())) as other:
        headers = {**api.auth(tenant.id, "writer"), "X-Consistency-Token": token}
        path = tenant.path("/events")
        resp = await other.post(path, json=event("order.placed", {"n": 1}), headers=headers)
        assert resp.status == 202, await resp.text()  # the other gateway now caches version 1
        v2 = await accepted(await add_version(tenant, "order.placed", token, schema={
            "type": "object", "properties": {"n": {"type": "integer"}, "m": {"type": "string"}},
            "additionalProperties": False,
        }))  # fmt: skip
        # Wait for the projection only (a read), then the other gateway must take v2 data
        # without any token: it re-reads the latest version after LATEST_TTL_SECONDS (0.5 s).
        # The bound below leaves room for a loaded machine; it measures no speed.
        assert LATEST_TTL_SECONDS < 1
        await tenant.read_json("/event-types/order.placed", v2["consistency_token"])
        plain = api.auth(tenant.id, "writer")
        async with asyncio.timeout(10):
            while True:
                resp = await other.post(
                    path, json=event("order.placed", {"n": 2, "m": "x"}), headers=plain
                )
                if resp.status == 202:
                    break
                assert resp.status == 422, await resp.text()
                await asyncio.sleep(0.05)


# -- projections, upcasting on fold, order and conditions ----------------------


async def test_projection_folds_like_record_events(tenant: TenantApi) -> None:
    projection = {"collection": "invoices", "id": "/invoice_id", "op": "patch",
                  "fields": {"status": {"const": "paid"}, "paid_amount": "/amount"}}  # fmt: skip
    doc = await register(tenant, type="invoice.paid", schema=INVOICE_V1, projection=projection)
    await register(tenant, type="invoice.issued", schema=INVOICE_V1, projection={
        "collection": "invoices", "id": "/invoice_id", "op": "upsert",
        "fields": {"status": {"const": "open"}, "amount": "/amount"},
    })  # fmt: skip
    voided = await register(tenant, type="invoice.voided", schema={
        "type": "object", "properties": {"invoice_id": {"type": "string"}},
        "required": ["invoice_id"],
    }, projection={"collection": "invoices", "id": "/invoice_id", "op": "delete"})  # fmt: skip
    token = voided["consistency_token"]
    await tenant.read_json("/event-types/invoice.paid", doc["consistency_token"])

    # Order per record: issued, then paid, in one batch; the subject is set to the record.
    batch = await accepted(await publish(tenant, [
        event("invoice.issued", {"invoice_id": "inv-1", "amount": 40}),
        event("invoice.paid", {"invoice_id": "inv-1", "amount": 40}),
        event("invoice.issued", {"invoice_id": "inv-2", "amount": 10}),
    ], token))  # fmt: skip
    record = await tenant.read_json("/collections/invoices/records/inv-1",
                                    batch["consistency_token"])  # fmt: skip
    assert record["version"] == 2
    assert record["data"] == {"status": "paid", "amount": 40, "paid_amount": 40}
    paid = await history_of(tenant, batch["events"][1]["id"], batch["consistency_token"])
    assert paid["subject"] == "invoices/inv-1"
    # A subject naming another record is refused; a patch of a missing record is rejected.
    resp = await publish(tenant, event("invoice.paid", {"invoice_id": "inv-1", "amount": 1},
                                       subject="invoices/inv-9"))  # fmt: skip
    assert paths(await problem(resp, 422)) == ["/subject"]
    ghost = await accepted(await publish(
        tenant, event("invoice.paid", {"invoice_id": "inv-404", "amount": 1})
    ))  # fmt: skip
    row = await history_of(tenant, ghost["events"][0]["id"], ghost["consistency_token"])
    assert row["status"] == "rejected"
    assert "does not exist" in row["reason"]
    # Conditions: expectedversion applies to the projected record.
    stale = await accepted(await publish(tenant, event(
        "invoice.paid", {"invoice_id": "inv-2", "amount": 10}, expectedversion=5
    )))  # fmt: skip
    row = await history_of(tenant, stale["events"][0]["id"], stale["consistency_token"])
    assert row["status"] == "rejected"
    assert "expected version 5" in row["reason"]
    right = await accepted(await publish(tenant, event(
        "invoice.paid", {"invoice_id": "inv-2", "amount": 10}, expectedversion=1
    )))  # fmt: skip
    record = await tenant.read_json("/collections/invoices/records/inv-2",
                                    right["consistency_token"])  # fmt: skip
    assert record["data"]["status"] == "paid"
    assert record["version"] == 2
    # delete
    gone = await accepted(await publish(tenant, event("invoice.voided", {"invoice_id": "inv-2"})))
    assert (await tenant.read("/collections/invoices/records/inv-2",
                              gone["consistency_token"])).status == 404  # fmt: skip
    # A record id the data does not give: 422 pointing at it.
    resp = await publish(tenant, event("invoice.voided", {"invoice_id": "bad id!"}))
    assert paths(await problem(resp, 422)) == ["/data/invoice_id"]

    # Upcast on fold: v2 renames amount -> total and projects total; an event naming v1
    # (old shape) published after v2 folds as v2.
    v2 = await accepted(await add_version(
        tenant, "invoice.paid", gone["consistency_token"], schema=INVOICE_V2, upcast=RENAME,
        projection={**projection, "fields": {"status": {"const": "paid"}, "paid": "/total"}},
    ))  # fmt: skip
    named = f"/v1/tenants/{tenant.id}/event-types/invoice.paid/versions/1"
    late = await accepted(await publish(tenant, [
        event("invoice.issued", {"invoice_id": "inv-3", "amount": 3}),
        event("invoice.paid", {"invoice_id": "inv-3", "amount": 3}, dataschema=named),
    ], v2["consistency_token"]))  # fmt: skip
    record = await tenant.read_json("/collections/invoices/records/inv-3",
                                    late["consistency_token"])  # fmt: skip
    assert record["data"] == {"status": "paid", "amount": 3, "paid": 3}

    # Replay and verify agree with the live fold (types and records).
    settings = tenant.api.settings
    await verify_replay_verify(settings, tenant.id)
    after = await tenant.read_json("/collections/invoices/records/inv-1")
    assert after["data"] == {"status": "paid", "amount": 40, "paid_amount": 40}
    assert (await tenant.read_json("/event-types/invoice.paid"))["latest_version"] == 2


# -- upcasting on read and delivery ------------------------------------------------


class Hooks:
    """A webhook receiver on 127.0.0.1 (allowed by the session's settings)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        self.arrived.set()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Hooks]:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield hooks
    finally:
        await runner.cleanup()


async def sse_events(resp: ClientResponse, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while len(out) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("data: "):
                out.append(orjson.loads(line[6:]))
    return out


async def test_upcast_on_read_stream_and_webhooks(api: Api, tenant: TenantApi) -> None:
    doc = await register(tenant, type="invoice.paid", schema=INVOICE_V1)
    async with receiver() as hooks:
        hook = await tenant.write(
            "POST", "/webhooks", json={"url": hooks.url, "types": ["invoice.*"]}, roles=ADMIN
        )
        await tenant.read_json("/event-types", hook["consistency_token"])
        old = await accepted(await publish(
            tenant, event("invoice.paid", {"invoice_id": "i1", "amount": 5}),
            doc["consistency_token"],
        ))  # fmt: skip
        await tenant.read_json(f"/events/{old['events'][0]['id']}", old["consistency_token"])
        async with asyncio.timeout(30):
            while not hooks.bodies:
                await hooks.arrived.wait()
                hooks.arrived.clear()
        assert hooks.bodies[0]["data"] == {"invoice_id": "i1", "amount": 5}  # v1 then

        v2 = await accepted(await add_version(
            tenant, "invoice.paid", old["consistency_token"], schema=INVOICE_V2, upcast=RENAME
        ))  # fmt: skip
        token = v2["consistency_token"]
        # Read back: the v1 event in v2's shape, dataschema naming v2.
        item = await history_of(tenant, old["events"][0]["id"], token)
        assert item["data"] == {"invoice_id": "i1", "total": 5}
        assert item["dataschema"].endswith("/versions/2")
        listing = await tenant.read_json("/events?type=invoice.paid", token)
        assert [i["data"] for i in listing["items"]] == [{"invoice_id": "i1", "total": 5}]
        # Delivered: an event naming v1, published now, reaches the webhook in v2's shape.
        named = f"/v1/tenants/{tenant.id}/event-types/invoice.paid/versions/1"
        late = await accepted(await publish(tenant, event(
            "invoice.paid", {"invoice_id": "i2", "amount": 8}, dataschema=named
        ), token))  # fmt: skip
        async with asyncio.timeout(30):
            while len(hooks.bodies) < 2:
                await hooks.arrived.wait()
                hooks.arrived.clear()
        assert hooks.bodies[1]["id"] == late["events"][0]["id"]
        assert hooks.bodies[1]["data"] == {"invoice_id": "i2", "total": 8}
        # Streamed (the replay from Last-Event-ID 0 and the live part alike).
        resp = await api.client.get(
            tenant.path("/stream?types=invoice.*"),
            headers={
                **api.auth(tenant.id, "reader"),
                "Last-Event-ID": "0",
                "Accept": "text/event-stream",
            },
            timeout=ClientTimeout(total=None, sock_read=None),
        )
        assert resp.status == 200, await resp.text()
        try:
            replayed = await sse_events(resp, 2)
            assert [e["data"] for e in replayed] == [
                {"invoice_id": "i1", "total": 5}, {"invoice_id": "i2", "total": 8},
            ]  # fmt: skip
            await accepted(await publish(tenant, event(
                "invoice.paid", {"invoice_id": "i3", "amount": 1}, dataschema=named
            )))  # fmt: skip
            [live] = await sse_events(resp, 1)
            assert live["data"] == {"invoice_id": "i3", "total": 1}
        finally:
            resp.close()


# -- isolation ----------------------------------------------------------------------


async def test_types_are_per_tenant(api: Api, tenant: TenantApi, pool: asyncpg.Pool) -> None:
    other = TenantApi(api, (await api.create_tenant())["id"])
    mine = await register(tenant, type="invoice.paid", schema=INVOICE_V1)
    theirs = await register(other, type="invoice.paid", schema={"type": "string"})
    assert theirs["version"] == 1  # the same name, another tenant: its own type
    await tenant.read_json("/event-types", mine["consistency_token"])
    await other.read_json("/event-types", theirs["consistency_token"])
    ok = await publish(other, event("invoice.paid", "just text"))
    await accepted(ok)
    resp = await publish(other, event("invoice.paid", {"invoice_id": "i1", "amount": 1}))
    assert paths(await problem(resp, 422)) == ["/data"]
    third = TenantApi(api, (await api.create_tenant())["id"])
    resp = await publish(third, event("invoice.paid", {"invoice_id": "i1", "amount": 1}))
    assert paths(await problem(resp, 422)) == ["/type"]
    assert (await third.read_json("/event-types"))["items"] == []
    assert (await third.read("/event-types/invoice.paid")).status == 404
    # What workflow triggers ask (issue 23): does the tenant have this type?
    assert await type_exists(pool, tenant.id, "invoice.paid") is True
    assert await type_exists(pool, third.id, "invoice.paid") is False
    assert await type_exists(pool, tenant.id, "invoice.sent") is False
    # Another tenant's credentials cannot read the type.
    resp = await api.client.get(
        tenant.path("/event-types/invoice.paid"), headers=api.auth(other.id, "reader")
    )
    assert resp.status == 403


async def test_a_tenant_type_triggers_workflows(tenant: TenantApi) -> None:
    projection = {"collection": "invoices", "id": "/invoice_id", "op": "upsert",
                  "fields": {"status": {"const": "paid"}, "amount": "/amount"}}  # fmt: skip
    trigger = {"types": ["invoice.paid"], "collection": "invoices",
               "when": {"amount": {"gte": 100}}}  # fmt: skip
    steps = [{"id": "mark", "kind": "record", "op": "patch", "collection": "invoices",
              "record": "${/record/id}", "data": {"followed_up": True}}]  # fmt: skip
    # Before the type is registered, a trigger naming it is refused with its pointer.
    early = await tenant.call(
        "POST", "/workflows", roles=ADMIN, json={"id": "paid", "trigger": trigger, "steps": steps}
    )
    problem_doc = await problem(early, 422)
    assert paths(problem_doc) == ["/trigger/types/0"]
    assert "register it first" in problem_doc["errors"][0]["message"]

    doc = await register(tenant, type="invoice.paid", schema=INVOICE_V1, projection=projection)
    # The registration's token makes the definition wait for it (never a stale 422).
    created = await tenant.call(
        "POST", "/workflows", roles=ADMIN,
        json={"id": "paid", "trigger": trigger, "steps": steps},
        headers={"X-Consistency-Token": doc["consistency_token"]},
    )  # fmt: skip
    assert created.status == 202, await created.text()
    await tenant.read_json("/workflows/paid", (await created.json())["consistency_token"])

    batch = await accepted(await publish(tenant, [
        event("invoice.paid", {"invoice_id": "small", "amount": 5}),
        event("invoice.paid", {"invoice_id": "big", "amount": 150}),
    ]))  # fmt: skip
    [run] = await wait_run(tenant, "paid", finished)
    assert run["status"] == "succeeded", run
    assert run["trigger_event"] == batch["events"][1]["id"]
    record = await wait_record(
        tenant, "/collections/invoices/records/big", lambda r: r["version"] >= 2
    )
    assert record["data"] == {"status": "paid", "amount": 150, "followed_up": True}
    small = await tenant.read_json("/collections/invoices/records/small")
    assert small["data"] == {"status": "paid", "amount": 5}
    assert len(await runs_of(tenant, "paid")) == 1
