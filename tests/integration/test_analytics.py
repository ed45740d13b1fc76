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
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumers.analytics.processor import app_id
from consumers.analytics.recovery import last_record_ends
from devstack import ensure_topics
from eventfold.analytics_windows import SETTLE_MARGIN, WINDOWS, collection_of, window_start
from eventfold.settings import Settings
from tests.conftest import free_port, output, process, until_logged
from tests.integration.conftest import Api

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
GRACE = 3 * 3600
#: How a 1-minute / 1-hour table key looks in a changelog (JSON-encoded, \x1f escaped).
MINUTE_KEY, HOUR_KEY = b"\\u001f1m\\u001f", b"\\u001f1h\\u001f"
Expected = Counter[tuple[str, str, int, str, str]]


@dataclasses.dataclass
class Lane:
    """A private topic and faust app for one analytics test."""

    settings: Settings
    api: Api
    producer: AIOKafkaProducer
    procs: list[subprocess.Popen[bytes]]

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            **os.environ,
            "EVENTFOLD_EVENTS_TOPIC": self.settings.events_topic,
            "EVENTFOLD_DLQ_TOPIC": self.settings.dlq_topic,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": self.settings.consumer_group_prefix,
            "EVENTFOLD_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "EVENTFOLD_ANALYTICS_GRACE_SECONDS": str(GRACE),
            "EVENTFOLD_HTTP_PORT": str(free_port()),
            "EVENTFOLD_LOG_LEVEL": "WARNING",
            **overrides,
        }

    def spawn(self, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([EVENTFOLD, "process", "analytics"], env=self.env(**env))
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
    # Closed windows are not partial; the current one is. The minute holding ``now``
    # may have closed while the worker caught up (a slow run): then the hour holding it.
    window, span = ("1m", 60) if (now // 60 + 1) * 60 > time.time() + 2 else ("1h", 3600)
    resp = await lane.api.request(
        "GET",
        f"/v1/tenants/{tenants[0]}/analytics/events?window={window}&from={_iso(now - 5 * span)}",
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


async def test_two_workers_share_the_partitions_and_the_counts_stay_exact(lane: Lane) -> None:
    t = (await lane.api.create_tenant())["id"]
    now = time.time()
    expected: Expected = Counter()
    for i in range(300):
        subject = f"{('orders', 'users', 'items')[i % 3]}/{i % 40}"
        await lane.publish(t, "record.upserted", subject, now - (i % 5) * 60, event_id=f"s-{i}")
        expect(expected, "record.upserted", subject, now - (i % 5) * 60)
    await lane.producer.flush()
    lane.spawn()
    lane.spawn()
    await lane.wait_for(t, expected, now - 3600)
    # Both are members of the one group: each holds part of the partitions.
    await _stable_members(lane, 2)
    # More events after the rebalance: still every one counted once.
    for i in range(300, 400):
        await lane.publish(t, "record.patched", f"orders/{i % 40}", now, event_id=f"s-{i}")
        expect(expected, "record.patched", f"orders/{i % 40}", now)
    await lane.producer.flush()
    await lane.wait_for(t, expected, now - 3600)


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


async def committed_to_end(lane: Lane) -> None:
    """Wait until the analytics group has committed every offset of the lane's topic."""
    topic = lane.settings.events_topic
    partitions = await lane.producer.partitions_for(topic)
    reader = AIOKafkaConsumer(bootstrap_servers=lane.settings.kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=lane.settings.kafka_bootstrap)
    await reader.start()
    await admin.start()
    try:
        ends = await reader.end_offsets([TopicPartition(topic, p) for p in partitions])
        async with asyncio.timeout(90):
            while True:
                offsets = await admin.list_consumer_group_offsets(app_id(lane.settings))
                if all(
                    (meta := offsets.get(tp)) is not None and meta.offset >= end
                    for tp, end in ends.items()
                    if end
                ):
                    return
                await asyncio.sleep(0.2)
    finally:
        await reader.stop()
        await admin.close()


async def test_sigkilled_worker_resumes_with_the_same_counts(lane: Lane) -> None:
    tenants = [(await lane.api.create_tenant())["id"] for _ in range(3)]
    now = time.time()
    expected: dict[str, Expected] = {t: Counter() for t in tenants}
    parts = 3
    per_part = 1500

    async def publish(part: int) -> None:
        for i in range(part * per_part, (part + 1) * per_part):
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

    async def kill_once_past(proc: subprocess.Popen[bytes], count: int) -> None:
        async with asyncio.timeout(120):
            while await served() <= count:
                assert proc.poll() is None, "the worker died by itself"
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)

    # Part 0 counted and committed (its table state is in the changelogs); part 1
    # counted, then the worker is killed before or around its next commit.
    await publish(0)
    first = lane.spawn()
    await committed_to_end(lane)
    await publish(1)
    await kill_once_past(first, per_part)
    # The next worker restores part 0 from the changelogs, counts part 1 again from
    # the committed offsets and commits; it is killed in the middle of part 2.
    second = lane.spawn()
    await committed_to_end(lane)
    await publish(2)
    await kill_once_past(second, 2 * per_part)
    lane.spawn()
    for t in tenants:
        await lane.wait_for(t, expected[t], now - 7200)
    # Republishing the whole stream (every id already counted) changes nothing.
    for i in range(0, parts * per_part, 7):
        t = tenants[i % 3]
        await lane.publish(t, "record.upserted", f"a/{i % 50}", now, event_id=f"e-{i}")
    sentinel = tenants[0]
    await lane.publish(sentinel, "order.placed", "z/end", now, event_id="end")
    expect(expected[sentinel], "order.placed", "z/end", now)
    await lane.producer.flush()
    for t in tenants:
        await lane.wait_for(t, expected[t], now - 7200)


async def _activity(lane: Lane, tenant: str, window: str, since: float) -> dict[Any, Any]:
    """Every activity item served for ``tenant`` (two per page: the cursor is exercised)."""
    out: dict[Any, Any] = {}
    after = None
    while True:
        query = f"?window={window}&from={_iso(since)}&limit=2" + (
            f"&after={after}" if after else ""
        )
        resp = await lane.api.request(
            "GET", f"/v1/tenants/{tenant}/analytics/activity{query}", tenant=tenant,
            roles=("reader",),
        )  # fmt: skip
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        for item in doc["items"]:
            start = int(datetime.fromisoformat(item["window_start"]).timestamp())
            out[(start, item["collection"])] = (
                item["events"], item["records_touched"], item["events_per_second"], item["partial"]
            )  # fmt: skip
        after = doc["next"]
        if after is None:
            return out


async def _wait_for_activity(
    lane: Lane, tenant: str, expected: dict[Any, Any], since: float
) -> None:
    """Wait until the 1m activity served equals ``expected`` (fails after 90 s with both)."""
    got: dict[Any, Any] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        got = await _activity(lane, tenant, "1m", since)
        if got == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"activity never matched: got {got}, expected {expected}")


async def test_activity_counts_distinct_records_and_rates(lane: Lane) -> None:
    t = (await lane.api.create_tenant())["id"]
    now = time.time()
    a, b = window_start(now - 600, 60), window_start(now - 300, 60)
    stream = [
        (a + 1, "orders/1"), (a + 2, "orders/2"), (a + 3, "orders/1"), (a + 4, "users/9"),
        (a + 5, "users/9"), (b + 1, "orders/1"), (b + 2, "orders/3"),
    ]  # fmt: skip
    for i, (at, subject) in enumerate(stream):
        await lane.publish(t, "record.upserted", subject, at, event_id=f"act-{i}")
    await lane.publish(t, "note.added", "", a + 7)  # no record subject
    await lane.producer.flush()
    lane.spawn()
    expected = {
        (a, "orders"): (3, 2, 0.05, False),
        (a, "users"): (2, 1, round(2 / 60, 3), False),
        (a, None): (1, 0, round(1 / 60, 3), False),
        (b, "orders"): (2, 2, round(2 / 60, 3), False),
    }
    await _wait_for_activity(lane, t, expected, now - 900)
    # A duplicate of act-0 under another record neither counts nor touches that record.
    # It is published once act-0 was counted: the two keys may go to different
    # partitions, whose relative order Kafka does not fix. A later event of the same
    # record (same key, so same partition, after the duplicate) shows it was processed.
    await lane.publish(t, "record.upserted", "orders/4", a + 6, event_id="act-0")
    await lane.publish(t, "record.upserted", "orders/4", b + 3, event_id="act-after")
    stream.append((b + 3, "orders/4"))
    await lane.producer.flush()
    expected[(b, "orders")] = (3, 3, 0.05, False)
    await _wait_for_activity(lane, t, expected, now - 900)
    # Hours: per hour and collection, the events and their distinct records.
    events: Counter[tuple[int, str | None]] = Counter()
    records: dict[tuple[int, str | None], set[str]] = {}
    for at, subject in [*stream, (a + 7, "")]:
        key = (window_start(at, 3600), collection_of(subject) or None)
        events[key] += 1
        records.setdefault(key, set()).update({subject} if subject else set())
    asked = time.time()
    hours = await _activity(lane, t, "1h", now - 7200)
    answered = time.time()
    assert {k: v[:2] for k, v in hours.items()} == {
        k: (n, len(records[k])) for k, n in events.items()
    }
    # An hour is partial while open; one that ended during the request may be either.
    assert all(
        v[3] is (k[0] + 3600 > asked)
        for k, v in hours.items()
        if not asked < k[0] + 3600 <= answered
    )


async def test_settled_windows_are_pruned_with_tombstones_and_stay_served(lane: Lane) -> None:
    t = (await lane.api.create_tenant())["id"]
    grace = "5"
    # With a grace this short the minute's events are late unless the worker (which
    # takes seconds to start on a busy machine) counts them before the minute closes:
    # start with most of a minute ahead.
    ahead = window_start(time.time(), 60) + 60 - time.time()
    if ahead < 45:
        await asyncio.sleep(ahead + 0.1)
    now = time.time()
    expected: Expected = Counter()
    for i in range(5):
        await lane.publish(t, "record.upserted", f"orders/{i % 2}", now, event_id=f"p-{i}")
        expect(expected, "record.upserted", f"orders/{i % 2}", now)
    await lane.producer.flush()
    lane.spawn(EVENTFOLD_ANALYTICS_GRACE_SECONDS=grace, EVENTFOLD_ANALYTICS_PRUNE_SECONDS="1")
    await lane.wait_for(t, expected, now - 3600)
    # Once the minute closed longer than grace + margin ago, its counter and touched
    # records leave the tables: the last changelog record of each 1m key is a tombstone.
    # A tombstone is committed with its partition's next transaction, i.e. once the
    # partition has a new event: other tenants' events (nudges) go to every partition.
    settles_at = window_start(now, 60) + 60 + int(grace) + SETTLE_MARGIN
    changelogs = [f"{app_id(lane.settings)}-{name}-changelog" for name in ("counts", "touched")]
    consumer = AIOKafkaConsumer(
        *changelogs, bootstrap_servers=lane.settings.kafka_bootstrap, auto_offset_reset="earliest",
        isolation_level="read_committed",
    )  # fmt: skip
    await consumer.start()
    latest: dict[tuple[str, bytes], bytes | None] = {}
    read = 0
    nudged = 0.0
    try:
        async with asyncio.timeout(settles_at - time.time() + 60):
            while not latest or any(
                v is not None for (_, k), v in latest.items() if MINUTE_KEY in k
            ):
                if time.time() > settles_at and time.monotonic() - nudged > 2:
                    nudged = time.monotonic()
                    for partition in range(lane.settings.topic_partitions):
                        nudge = {"id": uuid.uuid4().hex, "tenant": "nudge", "type": "n.n"}
                        await lane.producer.send(
                            lane.settings.events_topic, orjson.dumps(nudge), partition=partition
                        )
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    read += len(records)
                    for rec in records:
                        if rec.key is not None and t.encode() in rec.key:
                            latest[(rec.topic, rec.key)] = rec.value
    except TimeoutError:
        raise AssertionError(f"not pruned ({read} changelog records read): {latest}") from None
    finally:
        await consumer.stop()
    assert {topic for topic, _ in latest} == set(changelogs)
    hour_keys = [v for (_, k), v in latest.items() if HOUR_KEY in k]
    assert hour_keys
    # The hour is still open, hence kept, unless the test ran across the end of an
    # hour and that hour settled meanwhile (the windows are the wall clock's).
    hour_settles = window_start(now, 3600) + 3600 + int(grace) + SETTLE_MARGIN
    if time.time() < hour_settles:
        assert all(v is not None for v in hour_keys)
    # Redis keeps the copy until the retention: the served counts do not change.
    assert sum(
        (await lane.counts(t, "1m", now - 3600)).values()
    ) == 5  # fmt: skip
    await lane.wait_for(t, expected, now - 3600)


async def test_a_restore_ends_at_the_last_committed_record_not_at_a_marker(lane: Lane) -> None:
    """The end faust restores a changelog partition to: after its last committed record.

    The offset before the last stable offset is a transaction marker: a restore
    that waited for a record there ended only through faust's 10 s "aborted tx"
    fallback, from the fetch position (issue 21, item 9).
    """
    topic = lane.settings.events_topic
    tps = [TopicPartition(topic, p) for p in range(3)]
    producer = AIOKafkaProducer(
        bootstrap_servers=lane.settings.kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():  # partition 0: offsets 0, 1 and a commit marker
            for _ in range(2):
                await producer.send(topic, b"committed", partition=0)
        await producer.begin_transaction()  # 0: three aborted records and a marker; 1: one
        for _ in range(3):
            await producer.send(topic, b"aborted", partition=0)
        await producer.send(topic, b"aborted", partition=1)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    ends = await last_record_ends(lane.settings.kafka_bootstrap, tps)
    stable = await _stable_ends(lane, tps)
    assert stable == {tps[0]: 7, tps[1]: 2, tps[2]: 0}
    assert ends == {tps[0]: 2, tps[1]: 0, tps[2]: 0}


async def _stable_ends(lane: Lane, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=lane.settings.kafka_bootstrap, isolation_level="read_committed"
    )
    await reader.start()
    try:
        return dict(await reader.end_offsets(tps))
    finally:
        await reader.stop()


async def test_a_worker_killed_beside_another_leaves_its_partitions_counted_exactly(
    lane: Lane,
) -> None:
    """One of two workers is SIGKILLed while events stream in and is not restarted: the
    other takes its partitions over (after the dead member's session) and the counts
    stay exact. The kill comes soon after the stream starts, before the victim's first
    commit of the partitions it was assigned: the survivor must read them from the
    log's start (faust's seek to the committed offsets leaves a partition with none
    where the restore's prefetch left it; the records in between were lost for good)."""
    t = (await lane.api.create_tenant())["id"]
    now = time.time()
    expected: Expected = Counter()
    first, second = lane.spawn(), lane.spawn()
    await _stable_members(lane, 2)
    stop = asyncio.Event()
    published: list[int] = [0]

    async def stream() -> None:
        i = 0
        while not stop.is_set():
            subject = f"orders/{i % 40}"
            await lane.publish(t, "record.upserted", subject, now, event_id=f"k-{i}")
            expect(expected, "record.upserted", subject, now)
            i += 1
            published[0] = i
            if i % 20 == 0:
                await lane.producer.flush()
                await asyncio.sleep(0.05)
        await lane.producer.flush()

    task = asyncio.create_task(stream())
    try:
        async with asyncio.timeout(60):
            while published[0] < 600:
                await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        async with asyncio.timeout(60):
            while published[0] < 1500:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert second.poll() is None
    await lane.wait_for(t, expected, now - 3600)


async def _stable_members(lane: Lane, count: int) -> None:
    """Wait until the analytics group is stable with ``count`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=lane.settings.kafka_bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(60):
            while True:
                [response] = await admin.describe_consumer_groups([app_id(lane.settings)])
                group = response.groups[0]  # (error, id, state, type, protocol, members)
                if group[2] == "Stable" and len(group[5]) == count:
                    return
                await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def test_a_worker_whose_redis_is_away_still_stops_on_sigterm(lane: Lane) -> None:
    # Nothing listens there: every copy to Redis fails, the last one at the stop too.
    redis_away = f"redis://127.0.0.1:{free_port()}/0"
    with process("process", "analytics", env=lane.env(EVENTFOLD_REDIS_URL=redis_away)) as proc:
        await lane.publish(f"t{uuid.uuid4().hex[:12]}", "record.upserted", "things/1", time.time())
        await until_logged(proc, "analytics flush failed; retrying")
        proc.send_signal(signal.SIGTERM)
        # A faust app left running after its last flush failed kept the process alive.
        code = await asyncio.to_thread(proc.wait, 30)
        text = output(proc)
    assert code == 0, text[-3000:]
    assert "analytics last flush failed" in text, text[-3000:]
    # Redis away is one JSON line a try, not a traceback each second.
    assert "Traceback" not in text, text[-3000:]
