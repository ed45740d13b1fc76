"""Reading tenants' events from the log: Kafka partitions in offset ranges, or the S3 archive.

Kafka keys are ``{tenant}/{subject}`` (:func:`eventfold.kafka.message_key`), so a
tenant's records are picked by key before any JSON is parsed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventfold.archive import manifest_key
from eventfold.kafka import stop_client
from eventfold.projection.batch import LogEvent, log_event
from eventfold.settings import Settings

#: Records fetched per Kafka call while rebuilding (big batches keep the rate up).
FETCH_RECORDS = 20_000
#: Events folded per transaction while rebuilding.
FOLD_EVENTS = 20_000
#: Archive segments downloaded at once while rebuilding from the archive.
ARCHIVE_FETCHES = 8

T = TypeVar("T")


async def read_ahead(chunks: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Yield ``chunks`` while the next one is already being read and decoded.

    A rebuild alternates between Python work (fetching, decoding, folding) and
    waiting on PostgreSQL; reading the next chunk during that wait keeps both
    cores busy. One chunk is held ahead, so memory stays bounded. The source is
    closed (its Kafka consumer stopped) however the caller leaves the loop.
    """
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for item in chunks:
                await queue.put((True, item))
            await queue.put((False, None))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((False, exc))
        finally:
            await chunks.aclose()

    task = asyncio.create_task(pump(), name="rebuild-read-ahead")
    try:
        while True:
            more, item = await queue.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def offsets_at(settings: Settings, topic: str, at_ms: int | None) -> dict[int, int]:
    """Per partition: the first offset (``at_ms`` None) or the first at/after ``at_ms``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        begin = await consumer.beginning_offsets(tps)
        if at_ms is None:
            return {tp.partition: begin[tp] for tp in tps}
        end = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, at_ms))
        return {
            tp.partition: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps
        }
    finally:
        await stop_client(consumer.stop, "rebuild offsets consumer")


async def read_range(
    settings: Settings,
    topic: str,
    tenants: set[str],
    start: dict[int, int],
    stop: dict[int, int],
) -> AsyncGenerator[tuple[list[LogEvent], dict[int, int]], None]:
    """Yield the events of ``tenants`` in ``[start, stop)`` per partition, a chunk at a time.

    Each chunk comes with the positions it reaches (next offset per partition),
    also for chunks with no event of these tenants, so progress can be saved.
    Offsets gone from Kafka (retention, deleted records) are skipped: read the
    archive first for those.
    """
    wanted = {p: o for p, o in start.items() if o < stop.get(p, 0)}
    if not wanted:
        return
    keyed = {t.encode() for t in tenants}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in wanted}
        consumer.assign(list(tps.values()))
        for p, o in wanted.items():
            consumer.seek(tps[p], o)
        positions = dict(start)
        open_parts = set(wanted)
        chunk: list[LogEvent] = []
        while open_parts:
            got = await consumer.getmany(
                *[tps[p] for p in open_parts], timeout_ms=1000, max_records=FETCH_RECORDS
            )
            for tp, msgs in got.items():
                limit = stop[tp.partition]
                for m in msgs:
                    if m.offset >= limit:
                        break
                    positions[tp.partition] = m.offset + 1
                    if m.key is not None and m.key.partition(b"/")[0] not in keyed:
                        continue
                    ev = log_event(tp.partition, m.offset, m.timestamp, m.value)
                    if ev.event is not None and ev.event.tenant in tenants:
                        chunk.append(ev)
            for p in list(open_parts):
                if positions[p] >= stop[p] or (await consumer.position(tps[p])) >= stop[p]:
                    positions[p] = max(positions[p], stop[p])
                    open_parts.discard(p)
            # Big chunks make few, full transactions (the fold's cost is per statement).
            if len(chunk) >= FOLD_EVENTS or not open_parts:
                yield chunk, dict(positions)
                chunk = []
    finally:
        await stop_client(consumer.stop, "rebuild reader")


async def read_archive(
    settings: Settings, tenant: str, s3: Any
) -> AsyncGenerator[tuple[list[LogEvent], dict[int, int]], None]:
    """Yield ``tenant``'s archived events segment by segment, per partition in offset order.

    The positions yielded are the next offsets after each segment, so Kafka can
    take over where the archive ends with no gap and no overlap. ``s3`` is a
    client from :func:`eventfold.s3.open_s3` (one per rebuild); up to
    ``ARCHIVE_FETCHES`` segments are downloaded at once (a request's latency
    dominates a small segment's cost).
    """
    listing = await s3.list_objects_v2(
        Bucket=settings.s3_bucket, Prefix=f"tenant={tenant}/manifest/"
    )
    positions: dict[int, int] = {}
    chunk: list[LogEvent] = []
    for obj in sorted(listing.get("Contents", []), key=lambda o: str(o["Key"])):
        key = str(obj["Key"])
        partition = int(key.rsplit("partition=", 1)[1].split(".")[0])
        if key != manifest_key(tenant, partition):
            continue
        doc = await _get_json(s3, settings.s3_bucket, key)
        segments = list(doc.get("segments", []))
        fetches: collections.deque[asyncio.Task[bytes]] = collections.deque()
        try:
            for i, seg in enumerate(segments):
                # Keep the next segments downloading while this one is decoded and folded.
                for ahead in segments[i + len(fetches) : i + ARCHIVE_FETCHES]:
                    fetches.append(
                        asyncio.create_task(_get(s3, settings.s3_bucket, str(ahead["key"])))
                    )
                body = await fetches.popleft()
                lines = [ln for ln in gzip.decompress(body).splitlines() if ln]
                first = int(seg["first_offset"])
                # Lines are the log's envelopes; their own offsets are not kept, only the
                # object's first and last: history rows number them from the first.
                for n, line in enumerate(lines):
                    event = log_event(partition, first + n, 0, line)
                    if event.event is not None:
                        chunk.append(event)
                positions[partition] = int(seg["last_offset"]) + 1
                # Segments are small: folding several per transaction keeps the rate up.
                if len(chunk) >= FOLD_EVENTS:
                    yield chunk, dict(positions)
                    chunk = []
        finally:
            for task in fetches:
                task.cancel()
    if chunk or positions:
        yield chunk, dict(positions)


async def _get(s3: Any, bucket: str, key: str) -> bytes:
    resp = await s3.get_object(Bucket=bucket, Key=key)
    async with resp["Body"] as body:
        data: bytes = await body.read()
    return data


async def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(await _get(s3, bucket, key))
    return doc
