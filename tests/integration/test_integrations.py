"""Integration syncs against a real third party (an aiohttp server that misbehaves on purpose).

The app runs in-process (API, ingest, projector, sync runner) with 127.0.0.1
allowed as an integration target and short backoffs, so faults heal quickly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumers.sync.runner import SyncRunner
from entrypoints.bootstrap import Parts, create_app
from eventfold import signing
from eventfold.clients import open_pool
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from tests.integration.conftest import SESSION_PROCESSORS, Api, TenantApi

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "Bearer sk_live_do-not-leak-4f2a9c"


def sync_settings(stack: Settings) -> Settings:
    """The session's settings with 127.0.0.1 allowed and fast backoff."""
    return dataclasses.replace(
        stack,
        webhook_allow_hosts=("127.0.0.1",),
        sync_tick_seconds=0.1,
        sync_backoff_base=0.05,
        sync_backoff_cap=1.0,
        sync_circuit_failures=4,
        sync_circuit_seconds=0.5,
        sync_request_timeout=1.0,
    )


#: The session's processors and the sync runner (the only one running in this module).
SYNC_PARTS = Parts(processors=(*SESSION_PROCESSORS, "sync"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sapi(stack: Settings) -> AsyncIterator[Api]:
    """The whole app, the sync runner included, allowed to reach 127.0.0.1."""
    settings = sync_settings(stack)
    server = TestServer(create_app(settings, SYNC_PARTS))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Api(client, settings)
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def stenant(sapi: Api) -> TenantApi:
    """A fresh tenant on the sync app."""
    doc = await sapi.create_tenant()
    return TenantApi(sapi, doc["id"])


@dataclass
class Source:
    """A third party serving a change feed page by page, with scripted faults.

    ``entries`` is the feed: each item as it changed (an update appends the
    new version, a deletion appends ``{"id", "deleted": true}``). The cursor is
    the offset. ``faults`` are consumed one per request.
    """

    page_size: int = 10
    entries: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    token: str = SECRET
    delay: float = 0.0
    requests: int = 0
    times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    last_page: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """What the collection must hold: the last version of each live item."""
        state: dict[str, dict[str, Any]] = {}
        for e in self.entries:
            if e.get("deleted"):
                state.pop(e["id"], None)
            else:
                state[e["id"]] = e
        return state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.times.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.headers.get("Authorization") != self.token:
                return web.json_response({"error": "unauthorized"}, status=401)
            fault = self.faults.pop(0) if self.faults else ""
            if fault == "429":
                return web.json_response({}, status=429, headers={"Retry-After": "1"})
            if fault == "500":
                return web.json_response({}, status=500)
            if fault == "timeout":
                await asyncio.sleep(3)
            start = int(request.query.get("cursor", "0"))
            if fault == "reserve" and start >= self.page_size:
                start -= self.page_size  # the page before the cursor, served again
            page = self.entries[start : start + self.page_size]
            if fault == "dup" and self.last_page:
                page = [self.last_page[-1], *page]  # an item of the last page, again
            self.last_page = page
            end = start + self.page_size
            nxt = str(end) if end < len(self.entries) else None
            return web.json_response({"items": page, "next_cursor": nxt})
        finally:
            self.in_flight -= 1


@pytest_asyncio.fixture(loop_scope="session")
async def source() -> AsyncIterator[Source]:
    """A running third party on 127.0.0.1."""
    src = Source()
    app = web.Application()
    app.router.add_get("/items", src.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    src.url = str(server.make_url("/items"))
    try:
        yield src
    finally:
        await server.close()


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 60.0,
    why: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Await ``check()`` true, polling; fail after ``timeout`` seconds (saying ``why()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    detail = await why() if why is not None else ""
    pytest.fail(f"condition not met within {timeout} s: {detail}")


async def create(t: TenantApi, src: Source, **extra: Any) -> dict[str, Any]:
    body = {
        "kind": "http-poll",
        "url": src.url,
        "collection": "things",
        "interval_seconds": 3600,
        "headers": {"Authorization": SECRET},
        "cursor_param": "cursor",
        "items_field": "items",
        "cursor_field": "next_cursor",
        "id_field": "id",
        "deleted_field": "deleted",
        **extra,
    }
    resp = await t.call("POST", "/integrations", roles=("admin",), json=body)
    assert resp.status == 202, await resp.text()
    doc: dict[str, Any] = await resp.json()
    seen = await t.call(
        "GET",
        f"/integrations/{doc['id']}",
        roles=("admin",),
        headers={"X-Consistency-Token": doc["consistency_token"]},
    )
    assert seen.status == 200, await seen.text()
    return doc


async def records(t: TenantApi, collection: str = "things") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        q = f"?limit=1000&after={after}" if after else "?limit=1000"
        doc = await t.read_json(f"/collections/{collection}/records{q}")
        for item in doc["items"]:
            out[item["id"]] = item["data"]
        if not doc["next"]:
            return out
        after = doc["next"]


async def history(t: TenantApi) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        q = f"?limit=1000&after={after}" if after else "?limit=1000"
        doc = await t.read_json(f"/events{q}")
        out.extend(doc["items"])
        if not doc["next"]:
            return out
        after = doc["next"]


async def state(t: TenantApi, integration_id: str) -> dict[str, Any]:
    resp = await t.call("GET", f"/integrations/{integration_id}", roles=("admin",))
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


def feed(n: int, version: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"item-{i:04d}", "n": i, "v": version} for i in range(n)]


def assert_no_duplicate_events(src: Source, events: list[dict[str, Any]]) -> None:
    """Each change of an item in the feed is one event in the log, no more, no less."""
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    record_events = [e for e in events if e["type"].startswith("record.")]
    last: dict[str, Any] = {}
    changes = 0
    for e in src.entries:
        content = "deleted" if e.get("deleted") else orjson.dumps(e, option=orjson.OPT_SORT_KEYS)
        if last.get(e["id"], "deleted") != content:
            changes += 1
        last[e["id"]] = content
    assert len(record_events) == changes


async def test_initial_sync_through_faults_equals_the_source(
    stenant: TenantApi, source: Source, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source.page_size = 7
    source.entries = feed(350)  # 50 pages
    source.faults = ["", "", "429", "", "500", "500", "", "timeout", "", "dup", "", "reserve",
                     "", "dup", "500", "", "reserve"]  # fmt: skip
    created = await create(stenant, source)
    assert created["webhook_secret"].startswith("whsec_")
    iid = created["id"]

    async def synced() -> bool:
        return await records(stenant) == source.snapshot()

    async def why() -> Any:
        got = await records(stenant)
        return (await state(stenant, iid), len(got), source.requests)

    await eventually(synced, 90, why)
    st = await state(stenant, iid)
    assert st["state"] == "ok"
    assert st["kind"] == "http-poll"
    assert st["cursor"] == "343"
    assert st["last_run_at"]
    assert_no_duplicate_events(source, await history(stenant))

    # An update and a deletion upstream arrive on the next run.
    source.entries.append({"id": "item-0003", "n": 3, "v": 2})
    source.entries.append({"id": "item-0004", "deleted": True})
    resp = await stenant.call("POST", f"/integrations/{iid}/sync", roles=("admin",))
    assert resp.status == 202
    await eventually(synced, 30)
    assert "item-0004" not in await records(stenant)
    # A change back to an earlier content (A -> B -> A) is a change too.
    source.entries.append({"id": "item-0003", "n": 3, "v": 1})
    resp = await stenant.call("POST", f"/integrations/{iid}/sync", roles=("admin",))
    assert resp.status == 202
    await eventually(synced, 30)
    events = await history(stenant)
    assert_no_duplicate_events(source, events)

    # Credentials never appear in events, responses or logs.
    assert SECRET not in orjson.dumps(events).decode()
    listing = await stenant.call("GET", "/integrations", roles=("admin",))
    assert SECRET not in await listing.text()
    assert SECRET not in orjson.dumps(st).decode()
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.__dict__)
               for r in caplog.records)  # fmt: skip
    created_ev = [e for e in events if e["type"] == "integration.created"]
    assert created_ev
    # The integration is the actor of what it syncs; its creation, its creator's.
    assert {e["actor"] for e in events if e["type"].startswith("record.")} == {f"integration:{iid}"}
    assert created_ev[0]["actor"] == "user:eventfold-cli"
    assert "sk_live" not in orjson.dumps(created_ev).decode()


async def test_source_401_pauses_with_last_error(stenant: TenantApi, source: Source) -> None:
    source.token = "something else"
    iid = (await create(stenant, source))["id"]

    async def paused() -> bool:
        return (await state(stenant, iid))["state"] == "paused"

    await eventually(paused, 30)
    st = await state(stenant, iid)
    assert "401" in st["last_error"]
    # Resuming after the fix syncs.
    source.token = SECRET
    source.entries = feed(5)
    resp = await stenant.call("PATCH", f"/integrations/{iid}", roles=("admin",),
                              json={"paused": False})  # fmt: skip
    assert resp.status == 202, await resp.text()

    async def synced() -> bool:
        return await records(stenant) == source.snapshot()

    await eventually(synced, 30)


async def test_repeated_failures_open_the_circuit(stenant: TenantApi, source: Source) -> None:
    source.faults = ["500"] * 1000
    iid = (await create(stenant, source))["id"]

    async def opened() -> bool:
        return (await state(stenant, iid))["state"] == "circuit_open"

    await eventually(opened, 30)
    assert "500" in (await state(stenant, iid))["last_error"]
    source.faults = []
    source.entries = feed(3)

    async def healed() -> bool:
        return (await state(stenant, iid))["state"] == "ok"

    await eventually(healed, 30)
    assert await records(stenant) == source.snapshot()


async def test_two_workers_never_run_one_integration_at_once(
    stenant: TenantApi, source: Source, sapi: Api
) -> None:
    source.page_size = 5
    source.entries = feed(60)
    source.delay = 0.05
    pool = await open_pool(sapi.settings)
    stop = asyncio.Event()
    extra = [SyncRunner(sapi.settings, pool, Metrics()) for _ in range(2)]
    tasks = [asyncio.create_task(r.run(stop)) for r in extra]
    try:
        iid = (await create(stenant, source))["id"]
        for _ in range(10):
            await stenant.call("POST", f"/integrations/{iid}/sync", roles=("admin",))
            await asyncio.sleep(0.1)

        async def synced() -> bool:
            return await records(stenant) == source.snapshot()

        await eventually(synced, 60)
        assert source.max_in_flight == 1
        assert source.requests >= 12
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await pool.close()


async def test_inbound_webhook_verified_and_deduplicated(
    stenant: TenantApi, source: Source, sapi: Api
) -> None:
    source.token = "never accepted"  # the poller pauses; webhooks still flow
    created = await create(stenant, source, paused=True)
    iid, secret = created["id"], created["webhook_secret"]
    path = stenant.path(f"/integrations/{iid}/webhook")
    body = orjson.dumps({"items": [{"id": "w1", "x": 1}, {"id": "w2", "x": 2}]})

    resp = await sapi.client.post(
        path, data=body, headers=signing.signed_headers(secret, "msg_1", body)
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == {"items": 2, "duplicate": False}
    again = await sapi.client.post(
        path, data=body, headers=signing.signed_headers(secret, "msg_1", body)
    )
    assert (await again.json())["duplicate"] is True

    async def arrived() -> bool:
        return set(await records(stenant)) == {"w1", "w2"}

    await eventually(arrived, 30)
    bad = signing.signed_headers(signing.new_secret(), "msg_2", body)
    assert (await sapi.client.post(path, data=body, headers=bad)).status == 401
    stale = signing.signed_headers(secret, "msg_3", body, now=time.time() - 3600)
    assert (await sapi.client.post(path, data=body, headers=stale)).status == 401
    tampered = signing.signed_headers(secret, "msg_4", body)
    assert (await sapi.client.post(path, data=body + b" ", headers=tampered)).status == 401
    deletion = orjson.dumps({"items": [{"id": "w1", "deleted": True}]})
    resp = await sapi.client.post(
        path, data=deletion, headers=signing.signed_headers(secret, "msg_5", deletion)
    )
    assert resp.status == 200

    async def deleted() -> bool:
        return set(await records(stenant)) == {"w2"}

    await eventually(deleted, 30)
    events = await history(stenant)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    assert {e["actor"] for e in events if e["type"].startswith("record.")} == {f"integration:{iid}"}


async def test_configuration_is_validated_and_secrets_are_never_returned(
    stenant: TenantApi, source: Source
) -> None:
    refused = ("ftp://example.com/x", "http://10.1.2.3/items", "http://169.254.169.254/")
    for url in refused:
        body = {"kind": "http-poll", "url": url, "collection": "c", "interval_seconds": 60}
        resp = await stenant.call("POST", "/integrations", roles=("admin",), json=body)
        assert resp.status == 422, (url, await resp.text())
    resp = await stenant.call("POST", "/integrations", roles=("writer",), json={})
    assert resp.status == 403
    resp = await stenant.call("POST", "/integrations", roles=("admin",), json={"kind": "nope"})
    assert resp.status == 422
    # Headers too large to seal into the event (a 500 once), or holding control characters.
    base = {"kind": "http-poll", "url": source.url, "collection": "c", "interval_seconds": 60}
    for headers, where in (
        ({"X-A": "x" * 70_000}, "/headers"),
        ({"X-A": "a\x7fb"}, "/headers/X-A"),
    ):
        body = {**base, "headers": headers}
        resp = await stenant.call("POST", "/integrations", roles=("admin",), json=body)
        assert resp.status == 422, await resp.text()
        problem = await resp.json(content_type="application/problem+json")
        assert [e["path"] for e in problem["errors"]] == [where]
    iid = (await create(stenant, source, paused=True))["id"]
    st = await state(stenant, iid)
    assert st["state"] == "paused"
    assert "headers" not in orjson.dumps(st).decode()
    resp = await stenant.call("DELETE", f"/integrations/{iid}", roles=("admin",))
    assert resp.status == 202
    token = (await resp.json())["consistency_token"]
    gone = await stenant.call("GET", f"/integrations/{iid}", roles=("admin",),
                              headers={"X-Consistency-Token": token})  # fmt: skip
    assert gone.status == 404


async def test_reconciliation_deletes_what_disappeared_upstream(
    stenant: TenantApi, source: Source
) -> None:
    # A snapshot source (no deletion markers): items vanish from its listing.
    source.page_size = 4
    source.entries = feed(20)
    await create(stenant, source, interval_seconds=1, reconcile_seconds=1, reconcile_deletes=True)

    async def synced() -> bool:
        return await records(stenant) == source.snapshot()

    await eventually(synced, 30)
    source.entries = [e for e in source.entries if e["id"] not in ("item-0003", "item-0017")]
    await eventually(synced, 30)
    assert_no_duplicate_events_by_id(await history(stenant))


def assert_no_duplicate_events_by_id(events: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))


async def test_429_honours_retry_after_and_metrics_count_per_kind(
    stenant: TenantApi, source: Source, sapi: Api
) -> None:
    source.entries = feed(3)
    source.faults = ["429"]  # Retry-After: 1
    iid = (await create(stenant, source))["id"]

    async def synced() -> bool:
        return await records(stenant) == source.snapshot()

    await eventually(synced, 30)
    # A lower bound, not a performance figure: the retry may not come before Retry-After.
    assert source.times[1] - source.times[0] >= 0.9
    assert (await state(stenant, iid))["state"] == "ok"
    listing = await stenant.call("GET", "/integrations?limit=1", roles=("admin",))
    page = await listing.json()
    assert len(page["items"]) == 1
    assert set(page) == {"items", "next"}
    metrics = await (await sapi.client.get("/metrics")).text()
    assert 'eventfold_sync_pages_total{kind="http-poll"}' in metrics
    assert 'eventfold_sync_errors_total{kind="http-poll",reason="rate_limited"}' in metrics
