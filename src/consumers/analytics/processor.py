"""The analytics processor: a faust-streaming app run on our own event loop.

faust's ``Worker`` wants to own the loop and the process (signals, logging), so
we do not use it: the processor builds a ``faust.App`` from the settings and
starts its services with ``await app.start()`` on the running loop, next to the
other processors of ``eventfold run``, and stops it with ``await app.stop()``.

State: two faust tables with changelog topics, written only from the agent
(so every write goes to the changelog partition of the event being processed):

- ``counts``: per tenant / window size / window start / type / collection /
  source partition → (events counted, last source offset counted);
- ``seen``: per tenant + event id → offset of its first record, so a duplicate
  (a producer retry, a republished id) is not counted twice.

With ``processing_guarantee="exactly_once"`` faust commits the consumed offsets
and the changelog writes in one Kafka transaction per partition: a worker
killed mid-window restarts from the last committed transaction with the tables
restored from their changelogs, so no count is lost or doubled.

Served reads: a flush task copies the absolute value of every changed counter
to a per-tenant Redis hash (``ef:{tenant}:analytics:{w}:{start}``) with an
expiry = the window retention. Absolute values make the copy idempotent: a
rewrite after a restart writes the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import faust
import orjson
from redis.asyncio import Redis

from consumers.analytics.windows import WINDOWS, CountKey, collection_of, index_key, window_key
from eventfold.bootstrap import redis_client
from eventfold.metrics import Metrics
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.settings import Settings

log = logging.getLogger(__name__)


def app_id(settings: Settings) -> str:
    """The faust app id: also its consumer group and the prefix of its changelog topics."""
    return f"{settings.consumer_group_prefix}-analytics"


def event_time(doc: dict[str, Any], fallback_ms: int) -> float:
    """The event's CloudEvent ``time`` (epoch seconds), else the log timestamp."""
    raw = doc.get("time")
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    return fallback_ms / 1000


class Analytics:
    """Counts each tenant's events in 1-minute and 1-hour tumbling windows."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.app = faust.App(
            app_id(settings),
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            processing_guarantee="exactly_once",
            topic_partitions=settings.topic_partitions,
            web_enabled=False,
            datadir=str(settings.var_dir / "faust" / app_id(settings)),
            # Changelog topics are compacted; the table state is the compacted log.
            topic_replication_factor=1,
        )
        # faust creates its data dir without parents (the memory store keeps nothing there).
        Path(self.app.conf.datadir).mkdir(parents=True, exist_ok=True)
        self.topic = self.app.topic(
            settings.events_topic,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )
        self.counts = self.app.Table("counts", partitions=settings.topic_partitions)
        self.seen = self.app.Table("seen", partitions=settings.topic_partitions)
        self._dirty: set[str] = set()
        #: partition → next offset to process, for burst mode ("caught up").
        self.positions: dict[int, int] = {}
        self._newest_log_ms = 0
        self.app.agent(self.topic, name="analytics-count")(self._agent)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            self.count(msg.value, msg.partition, msg.offset, msg.timestamp)
            self.positions[msg.partition] = msg.offset + 1

    def count(self, value: bytes | None, partition: int, offset: int, log_ts: float) -> None:
        """Fold one log record into the tables (called inside the agent)."""
        outcome = self._count(value, partition, offset, log_ts)
        self.metrics.analytics_events.labels(outcome).inc()

    def _count(self, value: bytes | None, partition: int, offset: int, log_ts: float) -> str:
        try:
            doc = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return "invalid"
        if not isinstance(doc, dict):
            return "invalid"
        tenant, event_id, type_ = doc.get("tenant"), doc.get("id"), doc.get("type")
        if not (isinstance(tenant, str) and isinstance(event_id, str) and isinstance(type_, str)):
            return "invalid"
        if doc.get(REPLAY_ATTRIBUTE):
            return "replay"
        # ``seen`` holds the offset of an id's first record: a later record with the
        # same id is a duplicate; the same record again is a re-delivery after a crash
        # (its writes may be only partly in the committed changelog, see below).
        seen_key = f"{tenant}\x1f{event_id}"
        first = self.seen.get(seen_key)
        if first is not None and first != offset:
            return "duplicate"
        log_ms = int(log_ts * 1000) if log_ts < 1e11 else int(log_ts)
        ts = event_time(doc, log_ms)
        now = time.time()
        subject = doc.get("subject")
        collection = collection_of(subject if isinstance(subject, str) else None)
        counted = False
        for window, size in WINDOWS.items():
            start = int(ts // size) * size
            # A late event counts while its window closed less than the grace ago.
            if start + size + self.settings.analytics_grace_seconds < now:
                continue
            key = CountKey(tenant, window, start, type_, collection, partition).encode()
            # Each counter remembers the last offset it counted. faust's exactly_once
            # commit does not wait for the changelog buffer, so one event's table writes
            # can straddle a transaction boundary; after a crash the event is re-delivered
            # and must not be counted again by the counters that already have it. Only one
            # partition writes a key, and it does so in offset order.
            current = self.counts.get(key)
            if current is not None and current[1] >= offset:
                continue
            self.counts[key] = (current[0] if current else 0) + 1, offset
            self._dirty.add(key)
            counted = True
        if first is None:
            self.seen[seen_key] = offset
        self._newest_log_ms = max(self._newest_log_ms, log_ms)
        return "counted" if counted else "late"

    async def flush(self, redis: Redis, keys: set[str]) -> None:
        """Copy the counters ``keys`` to Redis (absolute values: idempotent)."""
        if not keys:
            return
        retention = {
            "1m": self.settings.analytics_retention_1m_seconds,
            "1h": self.settings.analytics_retention_1h_seconds,
        }
        async with redis.pipeline(transaction=False) as pipe:
            windows: set[tuple[str, str, int]] = set()
            for raw in keys:
                key = CountKey.decode(raw)
                hkey = window_key(key.tenant, key.window, key.start)
                pipe.hset(hkey, key.field, int(self.counts.get(raw, (0, -1))[0]))
                windows.add((key.tenant, key.window, key.start))
            for tenant, window, start in windows:
                expire_at = start + WINDOWS[window] + retention[window]
                pipe.expireat(window_key(tenant, window, start), expire_at)
                pipe.zadd(index_key(tenant, window), {str(start): start})
                pipe.zremrangebyscore(
                    index_key(tenant, window), "-inf", time.time() - retention[window]
                )
            await pipe.execute()
        if self._newest_log_ms:
            self.metrics.analytics_lag_seconds.set(
                max(0.0, time.time() - self._newest_log_ms / 1000)
            )
        self.metrics.analytics_table_keys.labels("counts").set(len(self.counts))
        self.metrics.analytics_table_keys.labels("seen").set(len(self.seen))

    async def _flusher(self, redis: Redis, stop: asyncio.Event) -> None:
        interval = self.settings.analytics_flush_ms / 1000
        was_rebalancing = True
        while not stop.is_set():
            rebalancing = bool(self.app.rebalancing)
            if was_rebalancing and not rebalancing:
                # Partitions (re)assigned and their tables restored from the
                # changelogs: copy everything once, in case a crash came between a
                # committed transaction and its flush.
                self._dirty.update(str(k) for k in self.counts)
            was_rebalancing = rebalancing
            keys, self._dirty = self._dirty, set()
            try:
                await self.flush(redis, keys)
            except Exception:  # Redis away: keep the keys, try again
                log.warning("analytics flush failed; retrying", exc_info=True)
                self._dirty |= keys
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        await self.flush(redis, self._dirty)

    async def _caught_up(self) -> bool:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await consumer.start()
        try:
            parts = [
                TopicPartition(self.settings.events_topic, p)
                for p in consumer.partitions_for_topic(self.settings.events_topic) or ()
            ]
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        return all(self.positions.get(tp.partition, 0) >= end for tp, end in ends.items() if end)

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Run the faust app on this loop until ``stop`` (or, in burst mode, caught up)."""
        stop = stop or asyncio.Event()
        redis = redis_client(self.settings)
        flush_stop = asyncio.Event()
        await self.app.start()
        flusher = asyncio.create_task(self._flusher(redis, flush_stop))
        try:
            while not stop.is_set():
                if burst and not self.app.rebalancing and await self._caught_up():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            flush_stop.set()
            await flusher
            await self.app.stop()
            await redis.aclose()
