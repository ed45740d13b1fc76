"""Real-time analytics: exact window counts from a spawned faust worker, across SIGKILLs.

Each test has its own topic and faust app id (so its own consumer group and
changelog topics), a worker spawned as ``eventfold process analytics``, and
reads the counts through the API of the session (tenants are created there).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from consumers.analytics.windows import WINDOWS, collection_of, window_start
from eventfold.infra import ensure_topics
from eventfold.settings import Settings
from tests.conftest import free_port
from tests.integration.conftest import Api

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
GRACE = 3 * 3600
Expected = Counter[tuple[str, str, int, str, str]]


@dataclasses.dataclass
class Lane:
    """A private topic and faust app for one analytics test."""

    settings: Settings
    api: Api
    producer: AIOKafkaProducer
    procs: list[subprocess.Popen[bytes]]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EVENTFOLD_EVENTS_TOPIC": self.settings.events_topic,
            "EVENTFOLD_DLQ_TOPIC": self.settings.dlq_topic,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": self.settings.consumer_group_prefix,
            "EVENTFOLD_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "EVENTFOLD_ANALYTICS_GRACE_SECONDS": str(GRACE),
            "EVENTFOLD_HTTP_PORT": str(free_port()),
            "EVENTFOLD_LOG_LEVEL": "WARNING",
        }

    def spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([EVENTFOLD, "process", "analytics"], env=self.env())
        self.procs.append(proc)
        return proc

    async def publish(
        self, tenant: str, type_: str, subject: str, at: float, *, event_id: str | None = None,
        **extra: Any,
    ) -> None:  # fmt: skip
        event = {
            "specversion": "1.0",
            "id": event_id or uuid.uuid4().hex,
            "source": "test",
            "type": type_,
            "subject": subject,
            "tenant": tenant,
            "time": datetime.fromtimestamp(at, UTC).isoformat(),
            "data": {},
            **extra,
        }
        await self.producer.send(
            self.settings.events_topic, orjson.dumps(event), key=f"{tenant}/{subject}".encode()
        )

    async def counts(self, tenant: str, window: str, since: float) -> Expected:
        """Every (window, type, collection) count the API serves for ``tenant``, all pages."""
        out: Expected = Counter()
        after = None
        while True:
            query = f"?window={window}&from={_iso(since)}&limit=500"
            if after:
                query += f"&after={after}"
            resp = await self.api.request(
                "GET", f"/v1/tenants/{tenant}/analytics/events{query}", tenant=tenant,
                roles=("reader",),
            )  # fmt: skip
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
            for item in doc["items"]:
                if item["type"].startswith("tenant."):
                    continue  # the tenant's creation, counted by the session's own worker
                start = datetime.fromisoformat(item["window_start"]).timestamp()
                out[(window, item["type"], int(start), item["collection"] or "", "")] += item[
                    "count"
                ]
            after = doc["next"]
            if after is None:
                return out

    async def wait_for(self, tenant: str, expected: Expected, since: float) -> Expected:
        """The served counts once they equal ``expected`` (fails after 90 s with the diff)."""
        got: Expected = Counter()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for proc in self.procs:
                assert proc.poll() in (None, -signal.SIGKILL), "the worker died by itself"
            got = Counter()
            for window in WINDOWS:
                got.update(await self.counts(tenant, window, since))
            if got == expected:
                return got
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"counts never matched: missing {expected - got}, extra {got - expected}"
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def expect(counts: Expected, type_: str, subject: str, at: float) -> None:
    """Add one counted event to ``counts``."""
    for window, size in WINDOWS.items():
        counts[(window, type_, window_start(at, size), collection_of(subject), "")] += 1


@pytest_asyncio.fixture(loop_scope="session")
async def lane(api: Api) -> AsyncIterator[Lane]:
    name = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        api.settings,
        events_topic=f"{api.settings.events_topic}.an-{name}",
        dlq_topic=f"{api.settings.dlq_topic}.an-{name}",
        consumer_group_prefix=f"{api.settings.consumer_group_prefix}.an-{name}",
        topic_partitions=3,
    )
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    lane = Lane(settings, api, producer, [])
    try:
        yield lane
    finally:
        await producer.stop()
        for proc in lane.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 20)
                if proc.poll() is None:
                    proc.kill()


async def test_exact_counts_per_window_type_and_collection(lane: Lane) -> None:
    tenants = [(await lane.api.create_tenant())["id"] for _ in range(2)]
    now = time.time()
    since = now - 3 * 3600
    expected: dict[str, Expected] = {t: Counter() for t in tenants}
    # Several 1 h and 1 m windows in the last two hours, three types, two collections.
    offsets = [7200, 5400, 3700, 1800, 600, 125, 61, 5, 0]
    for i, t in enumerate(tenants):
        for j, back in enumerate(offsets):
            for k in range(i + j % 3 + 1):
                type_ = ("record.upserted", "record.patched", "order.placed")[(j + k) % 3]
                subject = f"{('orders', 'users')[k % 2]}/r{j}-{k}"
                await lane.publish(t, type_, subject, now - back)
                expect(expected[t], type_, subject, now - back)
    # A duplicate (a producer retry: same id, same key) and a replayed event are not counted.
    await lane.publish(tenants[0], "record.upserted", "orders/dup", now, event_id="dup-1")
    expect(expected[tenants[0]], "record.upserted", "orders/dup", now)
    await lane.publish(tenants[0], "record.upserted", "orders/dup", now, event_id="dup-1")
    await lane.publish(tenants[0], "record.upserted", "orders/r", now, eventfoldreplay="rp-1")
    # Later than the grace after its windows closed: not counted; just within: counted.
    await lane.publish(tenants[1], "order.placed", "orders/late", now - GRACE - 3600 - 120)
    await lane.publish(tenants[1], "order.placed", "orders/late", now - GRACE + 300)
    expect(expected[tenants[1]], "order.placed", "orders/late", now - GRACE + 300)
    await lane.producer.flush()

    lane.spawn()
    for t in tenants:
        await lane.wait_for(t, expected[t], since - GRACE)
    # Closed windows are not partial; the current one is.
    resp = await lane.api.request(
        "GET", f"/v1/tenants/{tenants[0]}/analytics/events?window=1m&from={_iso(now - 300)}",
        tenant=tenants[0], roles=("reader",),
    )  # fmt: skip
    items = (await resp.json())["items"]
    for item in items:
        end = datetime.fromisoformat(item["window_end"]).timestamp()
        if end <= now:
            assert item["partial"] is False, item
        elif end > time.time():
            assert item["partial"] is True, item
    assert any(i["partial"] for i in items)
    assert not all(i["partial"] for i in items)


async def test_tenant_a_never_sees_tenant_bs_numbers(lane: Lane) -> None:
    a, b = [(await lane.api.create_tenant())["id"] for _ in range(2)]
    now = time.time()
    expected: Expected = Counter()
    await lane.publish(b, "order.placed", "orders/1", now)
    expect(expected, "order.placed", "orders/1", now)
    await lane.producer.flush()
    lane.spawn()
    await lane.wait_for(b, expected, now - 3600)
    assert await lane.counts(a, "1m", now - 3600) == Counter()
    token_a = lane.api.token(a, "reader")
    resp = await lane.api.client.get(
        f"/v1/tenants/{b}/analytics/events", headers={"Authorization": f"Bearer {token_a}"}
    )
    assert resp.status == 403


async def test_bad_parameters_are_422(lane: Lane) -> None:
    t = (await lane.api.create_tenant())["id"]
    for query in (
        "window=5m",
        "from=yesterday",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "window=1m&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "limit=0",
        "after=forged",
    ):
        resp = await lane.api.request(
            "GET", f"/v1/tenants/{t}/analytics/events?{query}", tenant=t, roles=("reader",)
        )
        assert resp.status == 422, query
        assert resp.content_type == "application/problem+json"


@pytest.mark.xfail(
    reason="issue 9 (open): a count can still be lost across a SIGKILL (seen once in three"
    " full runs: one 1h count missing); the faust exactly_once changelog path is under study",
    strict=False,
)
async def test_sigkilled_worker_resumes_with_the_same_counts(lane: Lane) -> None:
    tenants = [(await lane.api.create_tenant())["id"] for _ in range(3)]
    now = time.time()
    expected: dict[str, Expected] = {t: Counter() for t in tenants}
    total = 3000
    for i in range(total):
        t = tenants[i % 3]
        at = now - (i % 240) * 15
        type_ = ("record.upserted", "record.deleted")[i % 2]
        subject = f"{('a', 'b', 'c')[i % 3]}/{i % 50}"
        await lane.publish(t, type_, subject, at, event_id=f"e-{i}")
        expect(expected[t], type_, subject, at)
    await lane.producer.flush()

    async def served() -> int:
        n = 0
        for t in tenants:
            n += sum((await lane.counts(t, "1h", now - 7200)).values())
        return n

    killed_at: list[int] = []

    for _ in range(3):
        proc = lane.spawn()
        async with asyncio.timeout(120):
            before = await served()
            while await served() <= before and before < total:
                assert proc.poll() is None, "the worker died by itself"
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        killed_at.append(await served())
    assert min(killed_at) < total, f"every kill landed after the end ({killed_at})"
    lane.spawn()
    for t in tenants:
        await lane.wait_for(t, expected[t], now - 7200)
    # Republishing the whole stream (every id already counted) changes nothing.
    for i in range(0, total, 7):
        t = tenants[i % 3]
        await lane.publish(t, "record.upserted", f"a/{i % 50}", now, event_id=f"e-{i}")
    sentinel = tenants[0]
    await lane.publish(sentinel, "order.placed", "z/end", now, event_id="end")
    expect(expected[sentinel], "order.placed", "z/end", now)
    await lane.producer.flush()
    for t in tenants:
        await lane.wait_for(t, expected[t], now - 7200)
