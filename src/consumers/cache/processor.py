"""The cache processor: after PostgreSQL commits a record change, refresh its Redis entry.

It reads the events topic with its own consumer group and, per batch, waits
until the projector's checkpoints cover the batch (the projector NOTIFYs on
each commit, :class:`~eventfold.checkpoints.CheckpointWatcher` listens), then
reads the batch's records in one query per tenant and writes them with the
version guard of :mod:`eventfold.cache`: a newer entry is never overwritten, a
deleted record becomes a tombstone. What it writes is always what PostgreSQL
committed, never a value computed from the event, so the cache cannot get
ahead of (or disagree with) the projection.

Its position is Kafka's committed offset, written after each batch: a batch
seen twice (a crash, a rebalance) is written again harmlessly, because every
write is guarded by version.

An event the projector parked (dead-lettered, or deferred with a slow tenant)
is applied later, by a redrive this processor does not see in the log: such a
record's entry becomes a *hold* (reads go to PostgreSQL, fills are refused),
and is refreshed once its events are no longer parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from consumers.kafka_loop import start_with_retry
from consumers.projector.fold import RECORD_TYPES
from eventfold.cache import (
    HOLD_VERSION,
    HOT_TENANTS_KEY,
    Entry,
    RecordCache,
    hot_key,
    record_key,
    record_payload,
)
from eventfold.checkpoints import CheckpointWatcher
from eventfold.faults import is_retriable
from eventfold.ids import is_valid, tenant_schema
from eventfold.kafka import make_consumer
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.tenancy import tenant_connection

log = logging.getLogger("eventfold.cache")

#: Records per Kafka fetch (one PostgreSQL query per tenant and one pipeline each).
BATCH_SIZE = 2000
#: At start-up, the hottest keys warmed per tenant, and tenants looked at.
WARM_KEYS = 100
WARM_TENANTS = 1000
#: How often keys refreshed while parked are looked at again, and how many are kept.
PARKED_RECHECK_SECONDS = 2.0
MAX_PARKED_KEYS = 10_000

Key = tuple[str, str]
Batch = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]


class CacheProcessor:
    """Keeps Redis entries equal to what PostgreSQL committed, newest version winning."""

    name = "cache"

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: Metrics,
        *,
        topic: str | None = None,
        group: str | None = None,
        cache: RecordCache | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.topic = topic or settings.events_topic
        self.group = group or f"{settings.consumer_group_prefix}.cache"
        #: The projector whose checkpoints say what PostgreSQL has committed.
        self.projector = f"{settings.consumer_group_prefix}.projector"
        self.caught_up = asyncio.Event()
        self._cache = cache
        #: Tenant → keys refreshed while one of their events was parked.
        self._parked: dict[str, set[Key]] = defaultdict(set)

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Refresh entries until ``stop`` is set (or, in ``burst`` mode, until caught up)."""
        stop = stop or asyncio.Event()
        cache = self._cache or RecordCache.from_settings(self.settings, self.metrics)
        watcher = CheckpointWatcher(
            self.settings.database_url, self.pool, consumer=self.projector, topic=self.topic
        )
        consumer = make_consumer(
            self.settings,
            group=self.group,
            client_id=f"eventfold-{self.name}",
            max_poll_records=BATCH_SIZE,
        )
        consumer.subscribe([self.topic])
        rechecker: asyncio.Task[None] | None = None
        await watcher.start()
        try:
            await start_with_retry(consumer, stop)
            await self.warm(cache)
            rechecker = asyncio.create_task(self._recheck_parked(cache, stop), name="cache-parked")
            ready = self.metrics.processor_ready.labels(self.name)
            while not stop.is_set():
                ready.set(1 if consumer.assignment() else 0)
                got = await consumer.getmany(timeout_ms=500, max_records=BATCH_SIZE)
                if not got:
                    if await _caught_up(consumer):
                        self.caught_up.set()
                        if burst:
                            return
                    continue
                self.caught_up.clear()
                if not await self._refresh_until_done(cache, watcher, got, stop):
                    return
                await self._commit(consumer, got)
        finally:
            if rechecker is not None:
                rechecker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rechecker
            await consumer.stop()
            await watcher.stop()
            if self._cache is None:
                await cache.close()

    async def _refresh_until_done(
        self, cache: RecordCache, watcher: CheckpointWatcher, got: Batch, stop: asyncio.Event
    ) -> bool:
        """Wait for the projector to commit the batch, then refresh its keys; False on stop.

        A dependency that is away (PostgreSQL, Redis) is waited for with backoff:
        skipping a batch would leave entries stale until their TTL.
        """
        required = {tp.partition: msgs[-1].offset for tp, msgs in got.items() if msgs}
        while not watcher.covers(required):
            if stop.is_set():
                return False
            await watcher.wait_for(required, 5.0)
        keys = _record_keys(msg.value for msgs in got.values() for msg in msgs)
        delay = 0.2
        while True:
            try:
                await self.refresh(cache, keys)
                return True
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("cache refresh failed, retrying", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.5))  # noqa: S311
                return False
            delay = min(delay * 2, 10.0)

    async def refresh(self, cache: RecordCache, keys: Mapping[str, Iterable[Key]]) -> int:
        """Write the committed state of ``keys`` (per tenant) to the cache; entries written."""
        entries: list[Entry] = []
        for tenant, tenant_keys in keys.items():
            wanted = sorted(set(tenant_keys))
            if not wanted:
                continue
            parked = await self._parked_keys(tenant, wanted)
            held = {record_key(tenant, c, i) for c, i in parked}
            entries += [e for e in await self._entries(tenant, wanted) if e.key not in held]
            entries += [Entry(k, HOLD_VERSION, None, hold=True) for k in sorted(held)]
            if parked:
                room = MAX_PARKED_KEYS - sum(len(v) for v in self._parked.values())
                self._parked[tenant].update(sorted(parked)[: max(room, 0)])
        return await cache.put_many(entries)

    async def _entries(self, tenant: str, keys: Sequence[Key]) -> list[Entry]:
        """The committed rows of ``keys`` as guarded cache writes (absent keys: none)."""
        try:
            async with tenant_connection(self.pool, tenant) as conn:
                rows = await conn.fetch(
                    "SELECT collection, id, version, data, created_at, updated_at, deleted"
                    f" FROM {tenant_schema(tenant)}.records"
                    " WHERE (collection, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                    [c for c, _ in keys],
                    [i for _, i in keys],
                )
        except (asyncpg.InvalidSchemaNameError, asyncpg.UndefinedTableError):
            return []  # a tenant with no projection (yet): nothing to cache
        return [
            Entry(record_key(tenant, r["collection"], r["id"]), r["version"], record_payload(r))
            for r in rows
        ]

    async def _parked_keys(self, tenant: str, keys: Sequence[Key]) -> set[Key]:
        """Which of ``keys`` have an event the projector parked (applied later by a redrive)."""
        async with self.pool.acquire(timeout=5) as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT park_key FROM eventfold.parked"
                " WHERE consumer = $1 AND tenant = $2 AND park_key = ANY($3::text[])",
                self.projector,
                tenant,
                [f"{c}/{i}" for c, i in keys],
            )
        out: set[Key] = set()
        for r in rows:
            collection, _, record_id = r["park_key"].partition("/")
            out.add((collection, record_id))
        return out

    async def _recheck_parked(self, cache: RecordCache, stop: asyncio.Event) -> None:
        """Refresh remembered keys once their parked events are applied (or dropped)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARKED_RECHECK_SECONDS)
                return
            for tenant in list(self._parked):
                keys = sorted(self._parked[tenant])
                try:
                    still = await self._parked_keys(tenant, keys)
                    done = [k for k in keys if k not in still]
                    if done:
                        await cache.put_many(await self._entries(tenant, done))
                except Exception as exc:
                    if not is_retriable(exc):
                        log.exception("refreshing redriven keys failed")
                    continue  # tried again next round
                if still:
                    self._parked[tenant] = still
                else:
                    del self._parked[tenant]

    async def warm(self, cache: RecordCache, tenants: Sequence[str] | None = None) -> int:
        """Fill the hottest keys of the most recently read tenants (or of ``tenants``).

        Returns the entries written. Best effort: a cold cache is only slower, so
        a failure is logged, not raised.
        """
        written = 0
        try:
            if tenants is None:
                async with asyncio.timeout(5):
                    recent = cast(
                        list[bytes],
                        await cache.redis.zrevrange(HOT_TENANTS_KEY, 0, WARM_TENANTS - 1),
                    )
                names = [t.decode() for t in recent]
                tenants = [t for t in names if is_valid("tenant", t)]
            for start in range(0, len(tenants), 100):
                chunk = tenants[start : start + 100]
                async with asyncio.timeout(5):
                    async with cache.redis.pipeline(transaction=False) as pipe:
                        for t in chunk:
                            pipe.zrevrange(hot_key(t), 0, WARM_KEYS - 1)
                        hot = await pipe.execute()
                keys: dict[str, list[Key]] = {}
                for tenant, members in zip(chunk, hot, strict=True):
                    parsed = [_split_member(m) for m in members]
                    keys[tenant] = [k for k in parsed if k is not None]
                for tenant, tenant_keys in keys.items():
                    if tenant_keys:
                        written += await cache.put_many(await self._entries(tenant, tenant_keys))
        except Exception as exc:
            if not is_retriable(exc):
                log.exception("cache warming failed")
            else:
                log.warning("cache warming skipped", extra={"error": repr(exc)})
        if written:
            log.info("cache warmed", extra={"entries": written})
        return written

    async def _commit(self, consumer: AIOKafkaConsumer, got: Batch) -> None:
        offsets = {
            tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in got.items() if msgs
        }
        try:
            await asyncio.wait_for(consumer.commit(offsets), 10)
        except (KafkaError, TimeoutError) as exc:
            # The batch is seen again after a restart or rebalance: guarded writes make it harmless.
            log.info("cache offsets not committed", extra={"error": repr(exc)})
        for tp, msgs in got.items():
            high = consumer.highwater(tp)
            if high is not None and msgs:
                lag = max(0, high - msgs[-1].offset - 1)
                self.metrics.consumer_lag.labels(self.name, str(tp.partition)).set(lag)


def _record_keys(values: Iterable[bytes | None]) -> dict[str, set[Key]]:
    """Tenant → ``(collection, id)`` of the record events among raw log values."""
    out: dict[str, set[Key]] = defaultdict(set)
    for value in values:
        if not value:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # the projector parks it; nothing of ours to refresh
        if not isinstance(doc, dict) or doc.get("type") not in RECORD_TYPES:
            continue
        tenant, subject = doc.get("tenant"), doc.get("subject")
        if not isinstance(tenant, str) or not is_valid("tenant", tenant):
            continue
        if not isinstance(subject, str):
            continue
        key = _split_member(subject)
        if key is not None:
            out[tenant].add(key)
    return out


def _split_member(member: bytes | str) -> Key | None:
    text = member.decode() if isinstance(member, bytes) else member
    collection, sep, record_id = text.partition("/")
    if sep and is_valid("collection", collection) and is_valid("id", record_id):
        return collection, record_id
    return None


async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
    assigned = consumer.assignment()
    if not assigned:
        return False
    ends = await consumer.end_offsets(list(assigned))
    for tp in assigned:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def refresh_after_redrive(
    settings: Settings, pool: asyncpg.Pool, keys: Iterable[Mapping[str, object]]
) -> int:
    """Refresh the entries of records a redrive just applied (``eventfold dlq redrive``).

    ``keys`` are the redrive report's ``{"tenant", "key": "collection/id"}``. The
    cache processor would refresh them within seconds; doing it here makes a read
    right after the redrive see it. Best effort: a failure only delays the refresh.
    Returns the entries written.
    """
    wanted: dict[str, set[Key]] = defaultdict(set)
    for k in keys:
        parsed = _split_member(str(k.get("key", "")))
        tenant = str(k.get("tenant", ""))
        if parsed is not None and is_valid("tenant", tenant):
            wanted[tenant].add(parsed)
    if not wanted:
        return 0
    metrics = Metrics()
    cache = RecordCache.from_settings(settings, metrics)
    try:
        return await CacheProcessor(settings, pool, metrics, cache=cache).refresh(cache, wanted)
    except Exception as exc:
        if not is_retriable(exc):
            raise
        log.warning("cache not refreshed after the redrive", extra={"error": repr(exc)})
        return 0
    finally:
        await cache.close()
