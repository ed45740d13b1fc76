"""Replay benchmark: rebuild rate from Kafka and from the S3 archive, read latency during a rebuild.

``python -m benchmarks.replay --events 100000 [--tenants N]``. On a private topic
and bucket: produces ``--events`` record events spread over ``--tenants`` tenants
(interleaved in the log, as a shared topic holds them), marks them as projected
(the projector's checkpoints at the end of the log, empty live schemas), then times
``eventfold replay`` of all of them (the library call, one pass of the log) from
Kafka and, after the archiver has written the topic to S3, from the archive. Read
latency: single-record SELECTs under the role of another tenant, without and then
during a rebuild.
Figures are printed and written to ``benchmarks/results/<date>-replay.json`` (with the commit).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from benchmarks import provenance
from benchmarks.private import private_settings
from consumers.archiver.processor import Archiver
from consumers.rebuild.rebuild import Options, rebuild, rebuild_many
from devstack import ensure_bucket, ensure_topics
from eventfold import gctune, readmodel
from eventfold.clients import open_pool
from eventfold.kafka import message_key
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.tenancy import tenant_connection


async def produce(settings: Settings, tenants: list[str], count: int) -> None:
    """``count`` record events spread over ``tenants``, interleaved (after their
    ``tenant.created``)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    now = datetime.now(UTC)
    try:
        for tenant in tenants:
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
            tenant = tenants[i % len(tenants)]
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
            await conn.execute(readmodel.tenant_ddl(tenant))
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


async def main(
    events: int, rate: float | None, n_tenants: int = 1, per_tenant: bool = False
) -> dict[str, Any]:
    """Run the benchmark; return its figures."""
    name = uuid.uuid4().hex[:8]
    settings = private_settings(name, partitions=4, s3_bucket=f"eventfold-bench-replay-{name}")
    await ensure_topics(settings)
    await ensure_bucket(settings)
    tenants = [f"b{name}"] if n_tenants == 1 else [f"b{name}x{k}" for k in range(n_tenants)]
    reader = f"r{name}"
    pool = await open_pool(settings)
    gctune.settle()  # as `eventfold replay` does
    figures: dict[str, Any] = {"events": events, "tenants": n_tenants, "rate_cap": rate}
    try:
        await produce(settings, tenants, events)
        await produce(settings, [reader], 2000)
        await mark_projected(settings, pool, [*tenants, reader])
        # The reader tenant's live projection, built once, read during the rebuilds.
        await rebuild(settings, pool, reader, Options())

        figures["reads_idle"] = summary(await read_latencies(pool, reader, 5))

        # From Kafka, with reads of the other tenant going on (their latency measured).
        during: list[float] = []
        sampler = asyncio.create_task(sample(pool, reader, during))
        started = time.perf_counter()
        reports = await rebuild_many(settings, pool, tenants, Options(rate=rate))
        took = time.perf_counter() - started
        sampler.cancel()
        folded = sum(r.events for r in reports)
        figures["kafka"] = {
            "events": folded,
            "seconds": round(took, 2),
            "events_per_second": round(folded / took),
            "all_swapped": all(r.swapped for r in reports),
        }
        figures["reads_during_rebuild"] = summary(during)
        if per_tenant and len(tenants) > 1:
            # What one rebuild per tenant costs on the same log (each reads all of it).
            started = time.perf_counter()
            folded = 0
            for tenant in tenants:
                folded += (await rebuild(settings, pool, tenant, Options(rate=rate))).events
            took = time.perf_counter() - started
            figures["kafka_tenant_by_tenant"] = {
                "events": folded,
                "seconds": round(took, 2),
                "events_per_second": round(folded / took),
            }

        await archive_all(settings, pool, events + 2000 + len(tenants) + 1)  # + tenant.created
        started = time.perf_counter()
        reports = await rebuild_many(settings, pool, tenants, Options(from_archive=True, rate=rate))
        took = time.perf_counter() - started
        folded = sum(r.events for r in reports)
        figures["archive"] = {
            "events": folded,
            "seconds": round(took, 2),
            "events_per_second": round(folded / took),
            "all_swapped": all(r.swapped for r in reports),
        }
    finally:
        await pool.close()
    return figures


def cli() -> None:
    """Parse arguments, run, print and store the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=None, help="events/s cap for the rebuilds")
    p.add_argument("--tenants", type=int, default=1, help="tenants the events are spread over")
    p.add_argument(
        "--per-tenant",
        action="store_true",
        help="also rebuild the tenants one by one (one log read each), for comparison",
    )
    args = p.parse_args()
    prov = provenance.stamp()
    figures = asyncio.run(main(args.events, args.rate, args.tenants, args.per_tenant))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    doc = {"benchmark": "replay", "provenance": prov, "args": vars(args), "results": figures}
    print(f"saved {provenance.save(doc, 'replay')}")


if __name__ == "__main__":
    cli()
