"""Replay benchmark: rebuild rate from Kafka and from the S3 archive, read latency during a rebuild.

``python -m benchmarks.replay --events 100000``. On a private topic and bucket:
produces ``--events`` record events for one tenant, marks them as projected (the
projector's checkpoints at the end of the log, an empty live schema), then times
``eventfold replay`` (the library call) from Kafka and, after the archiver has
written the topic to S3, from the archive. Read latency: single-record SELECTs
under the tenant's role on another tenant, without and then during a rebuild.
Figures are printed and written to ``benchmarks/results/<date>-replay.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from consumers.archiver.processor import Archiver
from consumers.projector import store
from consumers.rebuild.rebuild import Options, rebuild
from eventfold import gctune
from eventfold.bootstrap import open_pool
from eventfold.infra import ensure_bucket, ensure_topics
from eventfold.kafka import message_key
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.tenancy import tenant_connection


async def produce(settings: Settings, tenant: str, count: int) -> None:
    """``count`` record events of ``tenant`` (after its ``tenant.created``)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    now = datetime.now(UTC)
    try:
        created = {
            "specversion": "1.0",
            "id": f"{tenant}-created",
            "source": "bench",
            "type": "tenant.created",
            "tenant": tenant,
            "time": now.isoformat(),
            "data": {"id": tenant, "name": tenant},
        }
        await producer.send_and_wait(
            settings.events_topic, orjson.dumps(created), key=message_key(tenant, None, "c")
        )
        pending = []
        for i in range(count):
            ev = {
                "specversion": "1.0",
                "id": f"{tenant}-{i}",
                "source": "bench",
                "type": "record.upserted",
                "subject": f"items/r{i % 20000}",
                "tenant": tenant,
                "time": (now + timedelta(microseconds=i)).isoformat(),
                "data": {"i": i, "name": f"item {i}", "tags": ["a", "b"], "pad": "x" * 200},
            }
            pending.append(
                await producer.send(
                    settings.events_topic,
                    orjson.dumps(ev),
                    key=message_key(tenant, ev["subject"], ev["id"]),
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def mark_projected(settings: Settings, pool: Any, tenants: list[str]) -> None:
    """Empty live schemas and projector checkpoints at the log's end (nothing to fold live)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    async with pool.acquire() as conn:
        for tenant in tenants:
            await conn.execute(store.tenant_ddl(tenant))
        await conn.executemany(
            "INSERT INTO eventfold.checkpoints (consumer, topic, partition, next_offset)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition)"
            " DO UPDATE SET next_offset = $4",
            [
                (f"{settings.consumer_group_prefix}.projector", tp.topic, tp.partition, o)
                for tp, o in ends.items()
            ],
        )


async def read_latencies(pool: Any, tenant: str, seconds: float) -> list[float]:
    """Single-record reads under the tenant's role for ``seconds``; each latency in ms."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with tenant_connection(pool, tenant) as conn:
            await conn.fetchrow(
                f'SELECT * FROM "t_{tenant}".records WHERE collection = $1 AND id = $2',
                "items",
                f"r{len(out) % 1000}",
            )
        out.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.002)
    return out


async def sample(pool: Any, tenant: str, into: list[float]) -> None:
    """Read latencies into ``into`` until cancelled."""
    while True:
        into.extend(await read_latencies(pool, tenant, 0.5))


async def archive_all(settings: Settings, pool: Any, total: int) -> None:
    """Run the archiver until its checkpoints cover ``total`` records."""
    archiver = Archiver(
        dataclasses.replace(settings, archive_segment_bytes=8 << 20, archive_segment_seconds=1),
        pool,
        Metrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        while True:
            async with pool.acquire() as conn:
                done = await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
                    " WHERE consumer = $1 AND topic = $2",
                    archiver.checkpoint_name,
                    settings.events_topic,
                )
            if done >= total:
                return
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task


def summary(ms: list[float]) -> dict[str, float]:
    """p50/p99/max of latencies in ms."""
    q = statistics.quantiles(ms, n=100)
    return {
        "reads": len(ms),
        "p50_ms": round(q[49], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(max(ms), 2),
    }


async def main(events: int, rate: float | None) -> dict[str, Any]:
    """Run the benchmark; return its figures."""
    name = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    settings = dataclasses.replace(
        base,
        events_topic=f"eventfold.bench-replay-{name}.events",
        dlq_topic=f"eventfold.bench-replay-{name}.dlq",
        consumer_group_prefix=f"eventfold-bench-replay-{name}",
        s3_bucket=f"eventfold-bench-replay-{name}",
        topic_partitions=4,
    )
    await ensure_topics(settings)
    await ensure_bucket(settings)
    tenant, reader = f"b{name}", f"r{name}"
    pool = await open_pool(settings)
    gctune.settle()  # as `eventfold replay` does
    figures: dict[str, Any] = {"events": events, "rate_cap": rate}
    try:
        await produce(settings, tenant, events)
        await produce(settings, reader, 2000)
        await mark_projected(settings, pool, [tenant, reader])
        # The reader tenant's live projection, built once, read during the rebuilds.
        await rebuild(settings, pool, reader, Options())

        figures["reads_idle"] = summary(await read_latencies(pool, reader, 5))

        # From Kafka, with reads of the other tenant going on (their latency measured).
        during: list[float] = []
        sampler = asyncio.create_task(sample(pool, reader, during))
        started = time.perf_counter()
        report = await rebuild(settings, pool, tenant, Options(rate=rate))
        took = time.perf_counter() - started
        sampler.cancel()
        figures["kafka"] = {
            "events": report.events,
            "seconds": round(took, 2),
            "events_per_second": round(report.events / took),
        }
        figures["reads_during_rebuild"] = summary(during)

        await archive_all(settings, pool, events + 2002)
        started = time.perf_counter()
        report = await rebuild(settings, pool, tenant, Options(from_archive=True, rate=rate))
        took = time.perf_counter() - started
        figures["archive"] = {
            "events": report.events,
            "seconds": round(took, 2),
            "events_per_second": round(report.events / took),
        }
    finally:
        await pool.close()
    return figures


def cli() -> None:
    """Parse arguments, run, print and store the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=None, help="events/s cap for the rebuilds")
    args = p.parse_args()
    figures = asyncio.run(main(args.events, args.rate))
    text = orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode()
    print(text)
    out = Path(__file__).with_name("results") / f"{datetime.now(UTC):%Y-%m-%d}-replay.json"
    out.write_text(text + "\n")


if __name__ == "__main__":
    cli()
