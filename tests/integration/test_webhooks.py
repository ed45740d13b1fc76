"""Webhooks end to end: subscribe, signed deliveries with retries, order, isolation, SSRF.

A real aiohttp receiver on 127.0.0.1 (allowed through ``webhook_allow_hosts``
in the session settings, retries ``0,1,1``, 2 s per attempt) plays the tenant's
server. The app here runs the API, ingest and the projector; the notifier runs
as a task of each test (or as a ``eventfold process notifier`` subprocess in the
crash test). Signatures are checked with the independent ``standardwebhooks``
package.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer
from standardwebhooks import Webhook

from consumers.notifier import delivery, schedule
from consumers.notifier.processor import Notifier
from consumers.notifier.schedule import Scheduler
from entrypoints.bootstrap import Parts, create_app
from eventfold.egress import AllowList, guarded_session
from eventfold.ids import tenant_schema
from eventfold.kafka import message_key
from eventfold.metrics import Metrics
from eventfold.sealing import keyring
from eventfold.settings import Settings
from tests.conftest import free_port
from tests.integration.conftest import Api, TenantApi

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Long ago: first in every claim's order, whatever else is due on the shared stack.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


@dataclasses.dataclass
class Hit:
    """One request the receiver got."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A webhook receiver whose answer per request is decided by ``decide``."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.decide: Callable[[str, int], int] = lambda _id, _n: 200
        self.delay = 0.0
        self.changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        if self.delay:
            await asyncio.sleep(self.delay)
        seen = sum(1 for h in self.hits if h.webhook_id == webhook_id)
        status = self.decide(webhook_id, seen + 1)
        self.hits.append(Hit(webhook_id, dict(request.headers), body, status))
        self.changed.set()
        return web.Response(status=status)

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    async def wait_for(self, condition: Callable[[], bool], within: float = 60) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.5)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def hooks_api(stack: Settings) -> AsyncIterator[Api]:
    """API, ingest and projector, without a notifier: each test runs its own."""
    server = TestServer(create_app(stack, Parts(processors=("projector",))))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Api(client, stack)
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(hooks_api: Api) -> TenantApi:
    doc = await hooks_api.create_tenant()
    return TenantApi(hooks_api, doc["id"])


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def notifier(stack: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """A notifier running for the test's duration."""
    stop = asyncio.Event()
    task = asyncio.create_task(Notifier(stack, pool, Metrics()).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def subscribe(tenant: TenantApi, url: str, types: list[str]) -> dict[str, Any]:
    """Subscribe and wait until the endpoint is projected (listed)."""
    resp = await tenant.call(
        "POST", "/webhooks", roles=("admin",), json={"url": url, "types": types}
    )
    assert resp.status == 202, await resp.text()
    doc: dict[str, Any] = await resp.json()
    listed = await tenant.call(
        "GET",
        "/webhooks",
        roles=("admin",),
        headers={"X-Consistency-Token": doc["consistency_token"]},
    )
    assert listed.status == 200, await listed.text()
    assert doc["id"] in [w["id"] for w in (await listed.json())["items"]]
    return doc


async def put(tenant: TenantApi, record: str, n: int) -> str:
    """Upsert ``things/{record}`` with ``{"n": n}``; returns the event id."""
    doc = await tenant.write("PUT", f"/collections/things/records/{record}", json={"n": n})
    return str(doc["event_id"])


async def attempts(tenant: TenantApi, hook_id: str) -> list[dict[str, Any]]:
    resp = await tenant.call("GET", f"/webhooks/{hook_id}/deliveries?limit=1000", roles=("admin",))
    assert resp.status == 200, await resp.text()
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def test_signed_delivery_retried_with_one_webhook_id(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    # The first two attempts of every event fail: the third is accepted.
    receiver.decide = lambda _id, n: 500 if n <= 2 else 200
    hook = await subscribe(tenant, receiver.url, ["record.*"])
    assert hook["secret"].startswith("whsec_")
    ids = [await put(tenant, f"r{i}", i) for i in range(3)]
    await receiver.wait_for(lambda: len(receiver.delivered()) >= 3)

    verifier = Webhook(hook["secret"])
    for hit in receiver.hits:
        assert hit.webhook_id in ids  # webhook-id is the event id, on every attempt
        payload = verifier.verify(hit.body, hit.headers)  # raises when it does not verify
        assert payload["id"] == hit.webhook_id
        assert payload["type"] == "record.upserted"
    assert sorted(h.webhook_id for h in receiver.delivered()) == sorted(ids)
    assert len(receiver.hits) == 9  # three attempts each, no more

    async with asyncio.timeout(30):  # the last attempts are recorded after their answers
        while len(log := await attempts(tenant, hook["id"])) < 9:
            await asyncio.sleep(0.05)
    first = sorted((a["attempt"], a["status_code"]) for a in log if a["event_id"] == ids[0])
    assert first == [(1, 500), (2, 500), (3, 200)]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in log)


async def test_secret_sealed_in_the_log_and_table(
    tenant: TenantApi, receiver: Receiver, pool: asyncpg.Pool, stack: Settings
) -> None:
    hook = await subscribe(tenant, receiver.url, ["record.upserted"])
    async with pool.acquire() as conn:
        sealed = await conn.fetchval(
            "SELECT secret_sealed FROM eventfold.webhooks WHERE id = $1", hook["id"]
        )
        envelope = await conn.fetchval(
            f"SELECT envelope FROM {tenant_schema(tenant.id)}.events WHERE type = 'webhook.created'"
        )
    secret_b64 = hook["secret"].removeprefix("whsec_")
    assert secret_b64 not in sealed
    assert secret_b64 not in orjson.dumps(envelope).decode()
    assert keyring(stack).open(sealed, purpose="webhook.secret").decode() == hook["secret"]


async def test_per_record_order_holds_under_retries(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    failing: set[str] = set()
    # Every other event fails its first two attempts; a record's later events wait.
    receiver.decide = lambda wid, n: 503 if wid in failing and n <= 2 else 200
    await subscribe(tenant, receiver.url, ["record.upserted"])
    sent: dict[str, list[str]] = {"a": [], "b": []}
    for n in range(6):
        for record in ("a", "b"):
            event_id = await put(tenant, record, n)
            sent[record].append(event_id)
            if n % 2 == 0:
                failing.add(event_id)
    total = sum(len(v) for v in sent.values())
    await receiver.wait_for(lambda: len(receiver.delivered()) >= total)
    for ids in sent.values():
        arrived = [h.webhook_id for h in receiver.delivered() if h.webhook_id in ids]
        assert arrived == ids


async def _write_batch(tenant: TenantApi, records: int, per_record: int) -> dict[str, list[str]]:
    """One batch of ``per_record`` upserts to each of ``records`` records, interleaved (so
    one page of the scheduler holds several events of each record); ids per record."""
    events, sent = [], defaultdict(list)
    for n in range(per_record):
        for r in range(records):
            event_id = f"batch-{uuid.uuid4().hex[:12]}"
            events.append({"specversion": "1.0", "id": event_id, "source": "test",
                           "type": "record.upserted", "subject": f"things/r{r}",
                           "data": {"n": n}})  # fmt: skip
            sent[f"r{r}"].append(event_id)
    await tenant.write("POST", "/events", json=events)
    return dict(sent)


def _arrival_orders(receiver: Receiver, sent: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per record, the event ids in the order they were first delivered."""
    firsts: dict[str, None] = {}
    for hit in receiver.delivered():
        firsts.setdefault(hit.webhook_id)
    return {record: [i for i in firsts if i in set(ids)] for record, ids in sent.items()}


async def test_a_batch_with_many_events_per_record_arrives_in_order_once(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    """Many deliveries of one line in one scheduler page: only the first is the line's
    head, each next one becomes it when the one before is done, none is sent twice."""
    await subscribe(tenant, receiver.url, ["record.upserted"])
    sent = await _write_batch(tenant, records=5, per_record=40)
    total = sum(len(ids) for ids in sent.values())
    await receiver.wait_for(lambda: len({h.webhook_id for h in receiver.delivered()}) >= total)
    assert _arrival_orders(receiver, sent) == sent
    assert len(receiver.delivered()) == total  # none twice


async def test_a_round_visits_only_tenants_with_new_history(
    tenant: TenantApi, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    """An idle subscribed tenant costs a round nothing; a new event makes it due."""
    await subscribe(tenant, receiver.url, ["record.upserted"])
    scheduler = Scheduler(pool)
    async with asyncio.timeout(60):
        while tenant.id in await scheduler.due_tenants():
            await scheduler.schedule_tenant(tenant.id)
    assert tenant.id not in await scheduler.due_tenants()
    # The tenant's position held, so no notifier (the session's runs one) moves it meanwhile.
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute(
            "SELECT 1 FROM eventfold.webhook_positions WHERE tenant = $1 FOR UPDATE", tenant.id
        )
        event_id = await put(tenant, "idle", 1)
        await _history_has(pool, tenant_schema(tenant.id), event_id)
        assert tenant.id in await scheduler.due_tenants()


async def test_a_hole_left_by_a_rollback_is_stepped_over_once_it_has_ended(
    tenant: TenantApi,
    receiver: Receiver,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``seq`` taken by a transaction that rolled back is a hole in the history for
    good: the walk steps over it once the transactions running when it saw the hole
    have ended, not after a fixed wait (here an hour, so only that can pass it)."""
    monkeypatch.setattr(schedule, "GAP_SETTLE_SECONDS", 3600.0)
    await subscribe(tenant, receiver.url, ["record.upserted"])
    scheduler = Scheduler(pool)
    before = await put(tenant, "hole", 1)
    await _scheduled(pool, scheduler, tenant, before)
    schema = tenant_schema(tenant.id)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        # A projector batch: its transaction id first (its checkpoints), then a seq; the
        # next batch commits the seq after it meanwhile.
        await conn.fetchval("SELECT pg_current_xact_id()")
        await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('{schema}.events', 'seq'))")
        after = await put(tenant, "hole", 2)
        await _history_has(pool, schema, after)
        for _ in range(2):  # the hole seen, then seen again while it may yet be committed
            await scheduler.schedule_tenant(tenant.id)
            assert not await _delivery_of(pool, after)
        await tx.rollback()
    await _scheduled(pool, scheduler, tenant, after)


async def _history_has(pool: asyncpg.Pool, schema: str, event_id: str) -> None:
    async with asyncio.timeout(60):
        while not await pool.fetchval(
            f"SELECT count(*) FROM {schema}.events WHERE id = $1", event_id
        ):
            await asyncio.sleep(0.05)  # the projector has not written it yet


async def _delivery_of(pool: asyncpg.Pool, event_id: str) -> int:
    count = await pool.fetchval(
        "SELECT count(*) FROM eventfold.webhook_deliveries WHERE event_id = $1", event_id
    )
    return int(count)


async def _scheduled(
    pool: asyncpg.Pool, scheduler: Scheduler, tenant: TenantApi, event_id: str
) -> None:
    """Run ``scheduler``'s rounds for ``tenant`` until ``event_id`` has its delivery."""
    async with asyncio.timeout(60):
        while not await _delivery_of(pool, event_id):
            if not await scheduler.schedule_tenant(tenant.id):
                await asyncio.sleep(0.05)  # not projected yet, or a transaction still running


async def test_a_line_whose_head_mark_was_lost_is_claimed_after_the_sweep(
    pool: asyncpg.Pool,
) -> None:
    """A race between the scheduler and a recorded delivery can leave a line with no
    marked head: the claim skips it until the sweep marks the line's first delivery, and
    then takes that one only. (In one rolled-back transaction: no notifier sees the rows.)"""
    hook = f"wh-sweep-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(
                "INSERT INTO eventfold.webhooks (id, tenant, url, types, secret_sealed,"
                " start_seq, created_at) VALUES ($1, 'sweep', 'http://127.0.0.1:9/x',"
                " '{record.*}', 'x', 0, now())",
                hook,
            )
            await conn.execute(
                "INSERT INTO eventfold.webhook_deliveries"
                " (webhook_id, tenant, event_id, subject, seq, body, next_attempt_at)"
                " SELECT $1, 'sweep', 'e' || n, 'things/r' || (n % 2), n, '\\x7b7d', $2"
                " FROM generate_series(1, 6) AS n",
                hook,
                LONG_AGO,
            )

            async def claimed() -> list[str]:
                rows = await conn.fetch(delivery._CLAIM, [], [], 100, 100, 100_000, 30.0)
                await conn.execute(
                    "UPDATE eventfold.webhook_deliveries SET lease_until = '-infinity'"
                    " WHERE webhook_id = $1",
                    hook,
                )
                return sorted(r["event_id"] for r in rows if r["webhook_id"] == hook)

            assert await claimed() == []
            assert await delivery.sweep(conn) >= 2
            # The first of each line (r1: e1, e3, e5; r0: e2, e4, e6), nothing behind them.
            assert await claimed() == ["e1", "e2"]
        finally:
            await tx.rollback()


async def test_a_dead_endpoint_does_not_hold_a_healthy_one(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    slow = Receiver()
    slow.delay = 30.0  # past the 2 s attempt deadline: every attempt times out
    await slow.start()
    try:
        dead_hook = await subscribe(tenant, slow.url, ["record.upserted"])
        await subscribe(tenant, receiver.url, ["record.upserted"])
        ids = [await put(tenant, f"x{i}", i) for i in range(8)]
        await receiver.wait_for(lambda: len(receiver.delivered()) >= len(ids))
        # All delivered to the healthy one while the dead one still has its first tries.
        log = await attempts(tenant, dead_hook["id"])
        assert not any(a["status_code"] for a in log)
        assert len({a["event_id"] for a in log if a["attempt"] >= 3}) < len(ids)
    finally:
        await slow.stop()


async def test_410_disables_the_endpoint(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    receiver.decide = lambda _id, _n: 410
    hook = await subscribe(tenant, receiver.url, ["record.upserted"])
    await put(tenant, "g", 1)

    async def disabled() -> dict[str, Any] | None:
        listed = await (await tenant.call("GET", "/webhooks", roles=("admin",))).json()
        found = [w for w in listed["items"] if w["id"] == hook["id"] and w["disabled_at"]]
        return found[0] if found else None

    async with asyncio.timeout(60):
        while (found := await disabled()) is None:
            await asyncio.sleep(0.2)
    assert "410" in found["disabled_reason"]
    await put(tenant, "g", 2)
    log = await attempts(tenant, hook["id"])
    assert [a["status_code"] for a in log] == [410]
    assert len(receiver.hits) == 1


async def test_subscribe_refuses_ssrf_targets(tenant: TenantApi) -> None:
    for url in (
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ):
        resp = await tenant.call(
            "POST", "/webhooks", roles=("admin",), json={"url": url, "types": ["record.*"]}
        )
        assert resp.status == 422, (url, await resp.text())
        assert resp.content_type == "application/problem+json"
    # Writers and readers may not subscribe.
    resp = await tenant.call(
        "POST", "/webhooks", json={"url": "https://example.com/h", "types": ["record.*"]}
    )
    assert resp.status == 403


async def test_a_name_resolving_to_loopback_is_refused_at_delivery(
    receiver: Receiver, stack: Settings
) -> None:
    # "vm" resolves to 127.0.0.1 here; with nothing allowed, the connection is refused.
    port = receiver.url.split(":")[2].split("/")[0]
    item = delivery.Claimed(
        id=0,
        webhook_id="0" * 16,
        tenant="t",
        event_id="e-1",
        subject="",
        body=b"{}",
        attempts=0,
        created_at=datetime.now(UTC),
        url=f"http://{_loopback_name()}:{port}/hook",
        secret_sealed=keyring(stack).seal(b"whsec_" + b"A" * 44, purpose="webhook.secret"),
    )
    none_allowed = AllowList.parse([])
    async with guarded_session(none_allowed) as session:
        result = await delivery.attempt(session, keyring(stack), none_allowed, item, 2.0)
    assert result.status is None, result
    # What the tenant reads in GET …/deliveries: the refusal, not the DNS answer.
    assert result.error == "refused: private address", result
    assert receiver.hits == []
    # The same name, allowed, is delivered to.
    allowed = AllowList.parse(["127.0.0.1"])
    async with guarded_session(allowed) as session:
        result = await delivery.attempt(session, keyring(stack), allowed, item, 2.0)
    assert result.status == 200, result


async def test_a_failed_connection_names_no_address(stack: Settings) -> None:
    # An allowed name whose port is closed: aiohttp's message holds the address the
    # name resolved to ("Connect call failed ('127.0.0.1', …)"); the tenant's does not.
    item = delivery.Claimed(
        id=0,
        webhook_id="0" * 16,
        tenant="t",
        event_id="e-1",
        subject="",
        body=b"{}",
        attempts=0,
        created_at=datetime.now(UTC),
        url=f"http://{_loopback_name()}:{free_port()}/hook",
        secret_sealed=keyring(stack).seal(b"whsec_" + b"A" * 44, purpose="webhook.secret"),
    )
    allowed = AllowList.parse(["127.0.0.1"])
    async with guarded_session(allowed) as session:
        result = await delivery.attempt(session, keyring(stack), allowed, item, 2.0)
    assert result.status is None, result
    assert result.error == "connection failed: ECONNREFUSED", result


def _loopback_name() -> str:
    import socket

    name = socket.gethostname()
    if socket.gethostbyname(name).startswith("127."):
        return name
    pytest.skip("no host name resolving to loopback besides localhost")


async def test_redrive_twice_delivers_once_more(
    tenant: TenantApi, receiver: Receiver, notifier: None, pool: asyncpg.Pool
) -> None:
    receiver.decide = lambda _id, _n: 500
    hook = await subscribe(tenant, receiver.url, ["record.upserted"])
    since = datetime.now(UTC).isoformat()
    event_id = await put(tenant, "d", 1)
    await receiver.wait_for(lambda: len(receiver.hits) >= 4)  # 1 + three retries, then dead

    async def state() -> str | None:
        async with pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT state FROM eventfold.webhook_deliveries"
                " WHERE webhook_id = $1 AND event_id = $2",
                hook["id"],
                event_id,
            )
        return None if value is None else str(value)

    async with asyncio.timeout(30):
        while await state() != "dead":
            await asyncio.sleep(0.1)
    receiver.decide = lambda _id, _n: 200
    path = f"/webhooks/{hook['id']}/redrive"
    first = await tenant.call("POST", path, roles=("admin",), json={"since": since})
    assert first.status == 200, await first.text()
    assert (await first.json())["redriven"] == 1
    await receiver.wait_for(lambda: len(receiver.delivered()) >= 1)
    second = await tenant.call("POST", path, roles=("admin",), json={"since": since})
    assert (await second.json())["redriven"] == 0
    async with asyncio.timeout(30):
        while await state() != "delivered":
            await asyncio.sleep(0.1)
    assert [h.webhook_id for h in receiver.delivered()] == [event_id]


async def test_sigkilled_notifier_delivers_everything_after_restart(
    tenant: TenantApi, receiver: Receiver, stack: Settings
) -> None:
    # Each event's first two attempts fail: the kill lands while retries are pending.
    receiver.decide = lambda _id, n: 500 if n <= 2 else 200
    await subscribe(tenant, receiver.url, ["record.upserted"])
    ids = [await put(tenant, f"k{i % 3}", i) for i in range(9)]
    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": stack.events_topic,
        "EVENTFOLD_DLQ_TOPIC": stack.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": stack.consumer_group_prefix,
        "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "EVENTFOLD_WEBHOOK_RETRY_SCHEDULE": "1,1,1",
        "EVENTFOLD_WEBHOOK_TIMEOUT_SECONDS": "2",
        # Each process serves its health and metrics: a port of its own.
        "EVENTFOLD_HTTP_PORT": str(free_port()),
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([EVENTFOLD, "process", "notifier"], env=env)
    try:
        await receiver.wait_for(lambda: len(receiver.hits) >= 3, within=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        delivered_before = len(receiver.delivered())
        assert delivered_before < len(ids)
        proc = subprocess.Popen([EVENTFOLD, "process", "notifier"], env=env)
        await receiver.wait_for(
            lambda: {h.webhook_id for h in receiver.delivered()} >= set(ids), within=120
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert {h.webhook_id for h in receiver.hits} == set(ids)  # never another webhook-id


async def test_replayed_events_never_notify(
    tenant: TenantApi, receiver: Receiver, notifier: None, stack: Settings
) -> None:
    hook = await subscribe(tenant, receiver.url, ["record.upserted"])
    replayed = {
        "specversion": "1.0",
        "id": f"replayed-{tenant.id}",
        "source": "test-replay",
        "type": "record.upserted",
        "subject": "things/p",
        "time": datetime.now(UTC).isoformat(),
        "tenant": tenant.id,
        "data": {"n": 0},
        "eventfoldreplay": "replay-1",
    }
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        # Same key as the record's writes: the same partition, so it is applied first.
        await producer.send_and_wait(
            stack.events_topic, orjson.dumps(replayed), key=message_key(tenant.id, "things/p", "")
        )
    finally:
        await producer.stop()
    after = await put(tenant, "p", 1)
    await receiver.wait_for(lambda: len(receiver.delivered()) >= 1)
    assert [h.webhook_id for h in receiver.hits] == [after]
    history = await tenant.read_json("/events?limit=100")
    statuses = {e["id"]: e["status"] for e in history["items"]}
    assert statuses.get(replayed["id"]) == "applied"  # applied, only not notified
    async with asyncio.timeout(30):  # the attempt is recorded once the answer is in
        while not (log := await attempts(tenant, hook["id"])):
            await asyncio.sleep(0.05)
    assert {a["event_id"] for a in log} == {after}


async def test_deleted_endpoint_gets_nothing_more(
    tenant: TenantApi, receiver: Receiver, notifier: None
) -> None:
    hook = await subscribe(tenant, receiver.url, ["record.*"])
    first = await put(tenant, "z", 1)
    await receiver.wait_for(lambda: len(receiver.delivered()) >= 1)
    resp = await tenant.call("DELETE", f"/webhooks/{hook['id']}", roles=("admin",))
    assert resp.status == 202, await resp.text()
    doc = await resp.json()
    listed = await tenant.call(
        "GET",
        "/webhooks",
        roles=("admin",),
        headers={"X-Consistency-Token": doc["consistency_token"]},
    )
    assert hook["id"] not in [w["id"] for w in (await listed.json())["items"]]
    # A second canary endpoint sees the next event: by then the deleted one would have too.
    canary = Receiver()
    await canary.start()
    try:
        await subscribe(tenant, canary.url, ["record.*"])
        second = await put(tenant, "z", 2)
        await canary.wait_for(lambda: len(canary.delivered()) >= 1)
        assert [h.webhook_id for h in canary.hits] == [second]
    finally:
        await canary.stop()
    assert [h.webhook_id for h in receiver.hits] == [first]
    again = await tenant.call("DELETE", f"/webhooks/{hook['id']}", roles=("admin",))
    assert again.status == 404
