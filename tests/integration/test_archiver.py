"""The S3 archiver: exact, ordered, per-tenant segments that a SIGKILL never duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from consumers.archiver.processor import Archiver
from consumers.archiver.segments import UNREADABLE
from devstack import ensure_bucket, ensure_topics
from eventfold.clients import open_pool
from eventfold.metrics import Metrics
from eventfold.s3 import open_s3
from eventfold.settings import Settings
from tests.conftest import free_port, new_tenant_id

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))

#: (partition, offset, tenant, raw value) of every record produced.
Logged = tuple[int, int, str, bytes]


@dataclasses.dataclass
class Lane:
    """A private topic, consumer group and bucket for one archiver test."""

    settings: Settings
    pool: asyncpg.Pool

    def archiver(self, **overrides: Any) -> Archiver:
        return Archiver(dataclasses.replace(self.settings, **overrides), self.pool, Metrics())

    async def produce(
        self, tenants: list[str], count: int, *, base_ms: int, step_ms: int = 1, pad: int = 200
    ) -> list[Logged]:
        """``count`` events spread over ``tenants``, stamped ``base_ms + i * step_ms``."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True
        )
        await producer.start()
        try:
            futures, values = [], []
            for i in range(count):
                tenant = tenants[i % len(tenants)]
                env = {
                    "specversion": "1.0",
                    "id": f"e-{i}",
                    "source": "test",
                    "type": "record.upserted",
                    "subject": f"k/{i % 7}",
                    "tenant": tenant,
                    "data": {"i": i, "pad": "x" * pad},
                }
                value = orjson.dumps(env)
                values.append((tenant, value))
                futures.append(
                    await producer.send(
                        self.settings.events_topic,
                        value,
                        key=f"{tenant}/k/{i % 7}".encode(),
                        timestamp_ms=base_ms + i * step_ms,
                    )
                )
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return [(m.partition, m.offset, t, v) for m, (t, v) in zip(metas, values, strict=True)]

    async def progress(self, consumer: str) -> int:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
                " WHERE consumer = $1 AND topic = $2",
                consumer,
                self.settings.events_topic,
            )
        return int(value)

    async def archive_all(self, archiver: Archiver, total: int) -> None:
        """Run ``archiver`` until its checkpoints cover ``total`` records, then stop it."""
        stop = asyncio.Event()
        task = asyncio.create_task(archiver.run(stop))
        try:
            async with asyncio.timeout(120):
                while await self.progress(archiver.checkpoint_name) < total:
                    assert not task.done(), task.exception() if task.done() else None
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    async def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Key → bytes of every object under ``prefix``."""
        out: dict[str, bytes] = {}
        async with open_s3(self.settings) as client:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    resp = await client.get_object(Bucket=bucket, Key=item["Key"])
                    async with resp["Body"] as body:
                        out[item["Key"]] = await body.read()
        return out


@pytest_asyncio.fixture(loop_scope="session")
async def lane(stack: Settings) -> AsyncIterator[Lane]:
    name = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.lane-{name}",
        dlq_topic=f"{stack.dlq_topic}.lane-{name}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.lane-{name}",
        s3_bucket=f"eventfold-lane-{name}",
        topic_partitions=3,
    )
    await ensure_topics(settings)
    await ensure_bucket(settings)
    pool = await open_pool(settings)
    try:
        yield Lane(settings, pool)
    finally:
        await pool.close()


def lines(body: bytes) -> list[bytes]:
    return gzip.decompress(body).splitlines()


async def test_every_event_lands_in_exactly_one_ordered_segment(lane: Lane) -> None:
    tenants = [new_tenant_id() for _ in range(3)]
    base = int(time.time() * 1000) - 60_000
    log = await lane.produce(tenants, 600, base_ms=base)
    archiver = lane.archiver(archive_segment_bytes=8_000, archive_segment_seconds=30)
    await lane.archive_all(archiver, len(log))

    where = {value: (p, o) for p, o, _, value in log}
    bucket = lane.settings.s3_bucket
    for tenant in tenants:
        stored = await lane.objects(bucket, f"tenant={tenant}/")
        segments = {k: v for k, v in stored.items() if k.endswith(".jsonl.gz")}
        seen: list[tuple[int, int]] = []
        for key, body in segments.items():
            part, first, last = (int(x) for x in key.rsplit("/", 1)[1][:-9].split("-"))
            got = [where[line] for line in lines(body)]
            assert {p for p, _ in got} == {part}
            offsets = [o for _, o in got]
            assert offsets == sorted(offsets), "lines out of log order"
            assert (offsets[0], offsets[-1]) == (first, last)
            seen += got
        expected = sorted((p, o) for p, o, t, _ in log if t == tenant)
        assert sorted(seen) == expected, "an event missing or archived twice"

        # One manifest per partition, its segments in order, counts matching the objects.
        for part in {p for p, _ in expected}:
            manifest = orjson.loads(stored[f"tenant={tenant}/manifest/partition={part:03d}.json"])
            entries = manifest["segments"]
            assert [e["first_offset"] for e in entries] == sorted(
                e["first_offset"] for e in entries
            )
            assert {e["key"] for e in entries} == {k for k in segments if f"/{part:03d}-" in k}
            for e in entries:
                assert e["events"] == len(lines(segments[e["key"]]))
    assert archiver.metrics.archive_lag.labels("0")._value.get() == 0


async def test_segments_close_by_size_and_by_record_time(lane: Lane) -> None:
    tenant = new_tenant_id()
    base = int(time.time() * 1000) - 600_000
    # 300 events 100 ms apart: 30 s of log; 10 s segments cut it in three per partition.
    log = await lane.produce([tenant], 300, base_ms=base, step_ms=100, pad=10)
    await lane.archive_all(
        lane.archiver(archive_segment_bytes=10_000_000, archive_segment_seconds=10), len(log)
    )
    stored = await lane.objects(lane.settings.s3_bucket, f"tenant={tenant}/date=")
    stamps = {value: base + i * 100 for i, (_, _, _, value) in enumerate(log)}
    for body in stored.values():
        ts = [stamps[line] for line in lines(body)]
        assert ts[-1] - ts[0] < 10_000
    per_partition = len({p for p, *_ in log})
    assert len(stored) >= 3 * per_partition

    tenant2 = new_tenant_id()
    log2 = await lane.produce([tenant2], 200, base_ms=base, pad=500)
    archiver = lane.archiver(archive_segment_bytes=5_000, archive_segment_seconds=30)
    await lane.archive_all(archiver, len(log) + len(log2))
    stored2 = await lane.objects(lane.settings.s3_bucket, f"tenant={tenant2}/date=")
    assert len(stored2) >= 200 * 500 // 5_000
    for body in stored2.values():
        assert len(gzip.decompress(body)) <= 5_000


async def test_one_tenants_history_is_listed_by_its_prefix(lane: Lane) -> None:
    mine, other = new_tenant_id(), new_tenant_id()
    base = int(time.time() * 1000) - 60_000
    log = await lane.produce([mine, other], 100, base_ms=base)
    await lane.archive_all(lane.archiver(archive_segment_seconds=30), len(log))
    stored = await lane.objects(lane.settings.s3_bucket, f"tenant={mine}/")
    assert stored
    assert all(k.startswith(f"tenant={mine}/") for k in stored)
    archived = [line for k, b in stored.items() if k.endswith(".gz") for line in lines(b)]
    assert sorted(archived) == sorted(v for _, _, t, v in log if t == mine)
    assert not await lane.objects(lane.settings.s3_bucket, f"tenant={UNREADABLE}/")


async def test_sigkilled_archiver_rewrites_the_same_objects(lane: Lane) -> None:
    rng = random.Random()
    tenants = [new_tenant_id() for _ in range(3)]
    base = int(time.time() * 1000) - 120_000
    log = await lane.produce(tenants, 3000, base_ms=base, step_ms=7, pad=300)
    total = len(log)
    knobs = {"archive_segment_bytes": 6_000, "archive_segment_seconds": 5.0}

    # The reference: one clean run into its own bucket.
    clean_bucket = f"{lane.settings.s3_bucket}-clean"
    clean = dataclasses.replace(
        lane.settings,
        s3_bucket=clean_bucket,
        consumer_group_prefix=f"{lane.settings.consumer_group_prefix}.clean",
    )
    await ensure_bucket(clean)
    archiver = Archiver(dataclasses.replace(clean, **knobs), lane.pool, Metrics())
    await lane.archive_all(archiver, total)

    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": lane.settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": lane.settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": lane.settings.consumer_group_prefix,
        "EVENTFOLD_S3_BUCKET": lane.settings.s3_bucket,
        "EVENTFOLD_ARCHIVE_SEGMENT_BYTES": str(knobs["archive_segment_bytes"]),
        "EVENTFOLD_ARCHIVE_SEGMENT_SECONDS": str(knobs["archive_segment_seconds"]),
        # Each process serves its health and metrics: a port of its own.
        "EVENTFOLD_HTTP_PORT": str(free_port()),
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    name = f"{lane.settings.consumer_group_prefix}.archiver"

    async def wait_until(target: int, proc: subprocess.Popen[bytes]) -> None:
        async with asyncio.timeout(120):
            while await lane.progress(name) < target:
                assert proc.poll() is None, "the archiver died by itself"
                await asyncio.sleep(0.01)

    killed_at: list[int] = []
    for target in sorted(rng.sample(range(total // 10, total * 8 // 10), 4)):
        proc = subprocess.Popen([EVENTFOLD, "process", "archiver"], env=env)
        try:
            await wait_until(max(target, await lane.progress(name) + 1), proc)
            await asyncio.sleep(rng.uniform(0, 0.05))  # land anywhere between PUT and checkpoint
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        killed_at.append(await lane.progress(name))
    assert killed_at[-1] < total, "the last kill landed after the end: nothing was tested"
    proc = subprocess.Popen([EVENTFOLD, "process", "archiver"], env=env)
    try:
        await wait_until(total, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 20)
        if proc.poll() is None:
            proc.kill()

    for tenant in tenants:
        expected = await lane.objects(clean_bucket, f"tenant={tenant}/")
        actual = await lane.objects(lane.settings.s3_bucket, f"tenant={tenant}/")
        assert len(expected) > 10
        assert sorted(actual) == sorted(expected), "a duplicate or missing segment after kills"
        for key, body in expected.items():
            assert actual[key] == body, f"{key} differs from the clean run's"


async def test_a_deleted_tenants_archive_goes_and_nothing_of_it_is_archived_later(
    lane: Lane,
) -> None:
    gone, kept = new_tenant_id(), new_tenant_id()
    base = int(time.time() * 1000) - 60_000
    before = await lane.produce([gone, kept], 40, base_ms=base)
    await lane.archive_all(lane.archiver(archive_segment_seconds=30), len(before))
    assert await lane.objects(lane.settings.s3_bucket, f"tenant={gone}/")

    producer = AIOKafkaProducer(bootstrap_servers=lane.settings.kafka_bootstrap)
    await producer.start()
    try:
        deletion = {
            "specversion": "1.0", "id": f"tenant.deleted:{gone}", "source": "test",
            "type": "tenant.deleted", "subject": gone, "tenant": gone, "data": {},
        }  # fmt: skip
        await producer.send_and_wait(
            lane.settings.events_topic, orjson.dumps(deletion), key=gone.encode(),
            timestamp_ms=base + 1000,
        )  # fmt: skip
    finally:
        await producer.stop()
    # Later events of the deleted tenant (on every partition) and of another.
    after = await lane.produce([gone, kept], 40, base_ms=base + 2000)
    await lane.archive_all(lane.archiver(archive_segment_seconds=30), len(before) + 1 + len(after))

    assert await lane.objects(lane.settings.s3_bucket, f"tenant={gone}/") == {}
    stored = await lane.objects(lane.settings.s3_bucket, f"tenant={kept}/")
    archived = [line for k, b in stored.items() if k.endswith(".gz") for line in lines(b)]
    assert sorted(archived) == sorted(v for _, _, t, v in before + after if t == kept)
