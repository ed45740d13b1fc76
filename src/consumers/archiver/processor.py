"""The archiver's Kafka loop: cut each partition into segments, PUT them, then checkpoint.

Its position is a per-partition checkpoint in ``eventfold.checkpoints`` (its own
consumer name), written only after a closed segment's objects and manifests are
in S3; on every assignment the consumer seeks there and starts a fresh segment.
Segment boundaries come from the log itself (:mod:`consumers.archiver.segments`),
so a crash between the PUTs and the checkpoint makes the next run rewrite the
same objects with the same bytes, never a second copy.

A deleted tenant's archive goes: the segment holding its ``tenant.deleted``
removes every object under its prefix once written, and no later segment
writes any of its events (the tenants deleted are known from the segments
seen, and from ``eventfold.tenants`` after a restart).

A segment whose partition went quiet closes once the newest end of the log is
``archive_segment_seconds`` past its first record, by the wall clock: the only
clock-driven cut, and it happens only at the end of the log, where a re-run
finds the same records (those written before the cut) unless new ones came in
within the same window.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from consumers.archiver.segments import (
    Segment,
    day_of,
    merge_manifest,
    should_close,
    tenant_objects,
    to_line,
)
from consumers.runtime import membership
from consumers.runtime.kafka import (
    MemberLoop,
    SeekToCheckpoints,
    caught_up,
    seek_to_stored,
    start_with_retry,
)
from eventfold import tracing
from eventfold.archive import manifest_key, tenant_prefix
from eventfold.backoff import Backoff
from eventfold.db import fetch_checkpoints
from eventfold.faults import is_retriable
from eventfold.kafka import make_consumer, stop_client
from eventfold.metrics import Metrics
from eventfold.s3 import open_s3
from eventfold.settings import Settings

log = logging.getLogger("eventfold.archiver")

#: Records per Kafka fetch.
BATCH_SIZE = 2000
#: Deadline of each S3 call (connect and read timeouts are shorter, in the client config).
S3_TIMEOUT = 30.0


class Archiver(MemberLoop):
    """Writes the events topic to S3 as per-tenant, per-partition gzip-jsonl segments."""

    name = "archiver"

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: Metrics,
        *,
        topic: str | None = None,
        group: str | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.topic = topic or settings.events_topic
        self.group = group or f"{settings.consumer_group_prefix}.archiver"
        self.caught_up = asyncio.Event()
        #: Set while the archiver holds its assignment and consumes (readiness).
        self.ready = asyncio.Event()
        self._open: dict[int, Segment] = {}
        #: Partition → next offset already durable in S3 (the checkpoint).
        self._durable: dict[int, int] = {}
        #: Bumped on every rebalance: a batch fetched before one is abandoned.
        self._epoch = 0
        self._stop = asyncio.Event()
        self._s3: Any = None
        #: Tenants whose ``tenant.deleted`` this process archived: none of theirs is kept.
        self._deleted: set[str] = set()

    @property
    def checkpoint_name(self) -> str:
        """The ``consumer`` column of the archiver's checkpoint rows."""
        return self.group

    def forget(self, partitions: Sequence[int]) -> None:
        """Drop the open segments of ``partitions`` (they are re-read from the checkpoint)."""
        self._epoch += 1
        for p in partitions:
            self._open.pop(p, None)
            self._durable.pop(p, None)

    async def seek_to_checkpoints(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> None:
        """Position ``partitions`` at their stored checkpoints (the start when none)."""
        self.forget([tp.partition for tp in partitions])
        async with self.pool.acquire(timeout=10) as conn:
            stored = await fetch_checkpoints(conn, self.checkpoint_name, self.topic)
        seek_to_stored(consumer, partitions, stored)
        for tp in partitions:
            if tp.partition in stored:
                self._durable[tp.partition] = stored[tp.partition]
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in partitions)}
        )

    async def _run(self, stop: asyncio.Event, burst: bool, member: membership.Member) -> None:
        """Archive until ``stop`` is set (or, in ``burst`` mode, until caught up).

        In burst mode the open segments are left open (not archived yet): closing
        them early would cut them where this run happened to stop.
        """
        self._stop = stop

        self.consumer = consumer = make_consumer(
            self.settings,
            group=self.group,
            client_id=f"eventfold-{self.name}",
            max_poll_records=BATCH_SIZE,
            group_instance_id=member.instance_id,
        )
        consumer.subscribe(
            [self.topic],
            listener=SeekToCheckpoints(self, consumer, self.ready, on_revoked=self.forget),
        )
        async with open_s3(self.settings) as client:
            self._s3 = client
            await start_with_retry(consumer, stop)
            try:
                while not stop.is_set():
                    member.check()
                    got = await consumer.getmany(timeout_ms=500, max_records=BATCH_SIZE)
                    if got:
                        self.caught_up.clear()
                        await self._take(got)
                    await self._close_idle(consumer, set(got))
                    self._report_lag(consumer)
                    if not got and await caught_up(consumer):
                        self.caught_up.set()
                        if burst:
                            return
            finally:
                self._s3 = None
                await stop_client(consumer.stop, "archiver consumer")

    async def _take(self, got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Add a fetch to the open segments, writing every segment it closes."""
        epoch = self._epoch
        s = self.settings
        for tp, msgs in got.items():
            for msg in msgs:
                if self._epoch != epoch or self._stop.is_set():
                    return  # a rebalance sought back to the checkpoints: this fetch is stale
                line = to_line(msg.offset, msg.value)
                seg = self._open.get(tp.partition)
                if msg.offset < self._durable.get(tp.partition, 0) or (
                    seg is not None and msg.offset <= seg.last_offset
                ):
                    continue  # archived already, or in the segment (a fetch overlapping a seek)
                ts = max(msg.timestamp, 0)
                size = len(line.text) if line else 0
                if seg is not None and should_close(
                    seg,
                    size,
                    ts,
                    max_bytes=s.archive_segment_bytes,
                    max_seconds=s.archive_segment_seconds,
                ):
                    await self._write(seg)
                    seg = None
                if seg is None:
                    seg = Segment(tp.partition, msg.offset, ts, day_of(ts))
                    self._open[tp.partition] = seg
                if line is not None:
                    seg.add(line)
                else:
                    seg.last_offset = msg.offset  # an empty record still moves the position

    async def _close_idle(self, consumer: AIOKafkaConsumer, fetched: set[TopicPartition]) -> None:
        """Close segments of partitions at the end of the log whose time is up."""
        now_ms = time.time() * 1000
        for tp in list(consumer.assignment()):
            seg = self._open.get(tp.partition)
            if seg is None or tp in fetched:
                continue
            high = consumer.highwater(tp)
            at_end = high is not None and seg.last_offset + 1 >= high
            age = now_ms - seg.first_timestamp_ms
            if at_end and age >= self.settings.archive_segment_seconds * 1000:
                await self._write(seg)

    async def _write(self, seg: Segment) -> None:
        """PUT a closed segment's objects, merge the manifests, then move the checkpoint.

        While tracing is on, a span linking the contexts of the segment's first events.
        """
        if not tracing.enabled():
            return await self._write_segment(seg)
        first = itertools.islice(seg.lines, tracing.MAX_LINKS)
        attributes = {
            "eventfold.partition": seg.partition,
            "eventfold.segment.first_offset": seg.first_offset,
            "eventfold.segment.last_offset": seg.last_offset,
            "eventfold.segment.events": len(seg.lines),
        }
        with tracing.batch_span(
            "archive segment",
            (tracing.json_carrier(line.text) for line in first),
            attributes=attributes,
        ):
            await self._write_segment(seg)

    async def _write_segment(self, seg: Segment) -> None:
        epoch = self._epoch
        ended = {line.tenant for line in seg.lines if line.ends_tenant}
        self._deleted |= ended
        gone = self._deleted | await self._deleted_of({line.tenant for line in seg.lines})
        objects = [obj for obj in tenant_objects(seg) if obj.tenant not in gone]
        for obj in objects:
            await self._s3_call(
                "put_object",
                Bucket=self.settings.s3_bucket,
                Key=obj.key,
                Body=obj.body,
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
            )
        for obj in objects:
            key = manifest_key(obj.tenant, seg.partition)
            current = await self._get_or_none(key)
            body = merge_manifest(current, obj.tenant, seg.partition, [obj.manifest_entry(seg)])
            if body != current:
                await self._s3_call(
                    "put_object",
                    Bucket=self.settings.s3_bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                )
        for tenant in sorted(ended):
            await self._purge(tenant)
        await self._checkpoint(seg.partition, seg.last_offset + 1)
        if self._epoch == epoch:
            self._open.pop(seg.partition, None)
            self._durable[seg.partition] = seg.last_offset + 1
        log.debug(
            "segment archived",
            extra={
                "partition": seg.partition,
                "first_offset": seg.first_offset,
                "last_offset": seg.last_offset,
            },
        )

    async def _deleted_of(self, tenants: set[str]) -> set[str]:
        """Which of ``tenants`` were deleted (one query; retried while PostgreSQL is away)."""
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                async with self.pool.acquire(timeout=10) as conn:
                    rows = await conn.fetch(
                        "SELECT id FROM eventfold.tenants"
                        " WHERE id = ANY($1::text[]) AND status = 'deleted'",
                        sorted(tenants),
                    )
                found = {r["id"] for r in rows}
                self._deleted |= found
                return found
            except Exception as exc:
                if not is_retriable(exc) or self._stop.is_set():
                    raise
                log.warning("tenants not readable, retrying", extra={"error": repr(exc)})
            await backoff.sleep(self._stop)

    async def _purge(self, tenant: str) -> None:
        """Delete every archived object of ``tenant`` (its segments and manifests)."""
        prefix = tenant_prefix(tenant)
        removed = 0
        while True:
            listed = await self._s3_call(
                "list_objects_v2", Bucket=self.settings.s3_bucket, Prefix=prefix, MaxKeys=1000
            )
            keys = [{"Key": obj["Key"]} for obj in listed.get("Contents", [])]
            if not keys:
                break
            answer = await self._s3_call(
                "delete_objects",
                Bucket=self.settings.s3_bucket,
                Delete={"Objects": keys, "Quiet": True},
            )
            if answer.get("Errors"):
                # Listed again, they would be tried forever: left to the operator (logged).
                log.error(
                    "deleted tenant's archive not removed",
                    extra={"tenant": tenant, "errors": answer["Errors"][:5]},
                )
                return
            removed += len(keys)
        log.info("deleted tenant's archive removed", extra={"tenant": tenant, "objects": removed})

    async def _get_or_none(self, key: str) -> bytes | None:
        async def get() -> bytes | None:
            try:
                resp = await self._s3.get_object(Bucket=self.settings.s3_bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data

        result: bytes | None = await self._retrying(get)
        return result

    async def _s3_call(self, operation: str, **kwargs: Any) -> Any:
        return await self._retrying(lambda: getattr(self._s3, operation)(**kwargs))

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` with a deadline, retried with backoff while S3 answers "not now"."""
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                async with asyncio.timeout(S3_TIMEOUT):
                    return await call()
            except Exception as exc:
                if not is_retriable(exc) or self._stop.is_set():
                    raise
                self.metrics.dependency_errors.labels("s3").inc()
                log.warning("s3 call failed, retrying", extra={"error": repr(exc)})
            await backoff.sleep(self._stop)

    async def _checkpoint(self, partition: int, next_offset: int) -> None:
        """Store ``next_offset`` (never moving backwards: a former owner may finish late)."""
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                async with self.pool.acquire(timeout=10) as conn:
                    await conn.execute(
                        "INSERT INTO eventfold.checkpoints"
                        " (consumer, topic, partition, next_offset)"
                        " VALUES ($1, $2, $3, $4)"
                        " ON CONFLICT (consumer, topic, partition) DO UPDATE SET"
                        " next_offset = GREATEST(eventfold.checkpoints.next_offset,"
                        " EXCLUDED.next_offset), updated_at = now()",
                        self.checkpoint_name,
                        self.topic,
                        partition,
                        next_offset,
                        timeout=10,
                    )
                return
            except Exception as exc:
                if not is_retriable(exc) or self._stop.is_set():
                    raise
                self.metrics.dependency_errors.labels("postgres").inc()
                log.warning("archive checkpoint not written, retrying", extra={"error": repr(exc)})
            await backoff.sleep()

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                behind = max(0, high - self._durable.get(tp.partition, 0))
                self.metrics.archive_lag.labels(str(tp.partition)).set(behind)
