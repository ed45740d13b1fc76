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

A record holding dead letters (an event the projector could not apply, or
deferred with a slow tenant) is applied later, by a redrive this processor
does not see in the log: such a record's entry becomes a *hold* (reads go to
PostgreSQL, fills are refused), and is refreshed once a redrive has applied
them (:mod:`eventfold.cachefill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from consumers.runtime import membership
from consumers.runtime.kafka import (
    MemberLoop,
    TrackAssignment,
    caught_up,
    start_with_retry,
)
from eventfold import cachefill, placement, tracing
from eventfold.backoff import Backoff
from eventfold.cache import (
    HOT_TENANTS_KEY,
    RecordCache,
    hot_key,
)
from eventfold.cachefill import Key
from eventfold.checkpoints import CheckpointWatcher
from eventfold.datakeys import ERASED
from eventfold.faults import is_retriable
from eventfold.fold import RECORD_TYPES
from eventfold.ids import is_valid
from eventfold.kafka import make_consumer, stop_client
from eventfold.metrics import Metrics
from eventfold.settings import HOME_SERVER, Settings

log = logging.getLogger("eventfold.cache")

#: Records per Kafka fetch (one PostgreSQL query per tenant and one pipeline each).
BATCH_SIZE = 2000
#: At start-up, the hottest keys warmed per tenant, and tenants looked at.
WARM_KEYS = 100
WARM_TENANTS = 1000
#: How often held keys (records with dead letters) are looked at again, and how many are kept.
HELD_RECHECK_SECONDS = 2.0
MAX_HELD_KEYS = 10_000

Batch = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]


class CacheProcessor(MemberLoop):
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
        #: The database server whose tenants' entries this processor refreshes; like
        #: the projector, each server's reads the log in a Kafka group of its own.
        self.server = settings.database_server or HOME_SERVER
        self.group = placement.server_group(
            group or f"{settings.consumer_group_prefix}.cache", settings
        )
        self._directory = placement.directory(settings)
        #: The projector whose checkpoints say what PostgreSQL has committed.
        self.projector = f"{settings.consumer_group_prefix}.projector"
        self.caught_up = asyncio.Event()
        #: Set while the processor holds its assignment and consumes (readiness).
        self.ready = asyncio.Event()
        self._cache = cache
        #: Tenant → keys held while they had dead letters.
        self._held: dict[str, set[Key]] = defaultdict(set)

    async def _run(self, stop: asyncio.Event, burst: bool, member: membership.Member) -> None:
        """Refresh entries until ``stop`` is set (or, in ``burst`` mode, until caught up)."""
        cache = self._cache or RecordCache.from_settings(self.settings, self.metrics)
        watcher = CheckpointWatcher(
            self.settings.database_url, self.pool, consumer=self.projector, topic=self.topic
        )
        self.consumer = consumer = make_consumer(
            self.settings,
            group=self.group,
            client_id=f"eventfold-{self.name}",
            max_poll_records=BATCH_SIZE,
            group_instance_id=member.instance_id,
        )
        consumer.subscribe([self.topic], listener=TrackAssignment(self.ready))
        rechecker: asyncio.Task[None] | None = None
        await watcher.start()
        try:
            await start_with_retry(consumer, stop)
            await self.warm(cache)
            rechecker = asyncio.create_task(self._recheck_held(cache, stop), name="cache-held")
            while not stop.is_set():
                member.check()
                got = await consumer.getmany(timeout_ms=500, max_records=BATCH_SIZE)
                if not got:
                    if await caught_up(consumer):
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
            await stop_client(consumer.stop, "cache consumer")
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
        values = [msg.value for msgs in got.values() for msg in msgs]
        found = _record_keys(values)
        found_deleted = _deleted_tenants(values)
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                # Only this server's tenants (eventfold.placement): the others' records
                # are not in its database.
                mine = await self._mine(found.keys() | found_deleted)
                keys = {t: k for t, k in found.items() if t in mine}
                deleted = found_deleted & mine
                for tenant in deleted:
                    keys.pop(tenant, None)  # its schema is gone: nothing to refresh
                with tracing.batch_span(
                    "cache refresh",
                    (tracing.headers_carrier(m.headers) for msgs in got.values() for m in msgs),
                    attributes={"messaging.consumer.group.name": self.group},
                ):
                    await self.refresh(cache, keys)
                # A deleted tenant's keys go, whatever wrote them (records, analytics, …).
                await cachefill.purge_tenants(self.settings, deleted)
                return True
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning("cache refresh failed, retrying", extra={"error": repr(exc)})
            if await backoff.sleep(stop):
                return False

    async def _mine(self, tenants: Iterable[str]) -> set[str]:
        """Those of ``tenants`` placed on this processor's database server."""
        servers = await self._directory.servers_of(tenants)
        return {t for t, server in servers.items() if server == self.server}

    async def refresh(self, cache: RecordCache, keys: Mapping[str, Iterable[Key]]) -> int:
        """Write the committed state of ``keys`` (per tenant) to the cache; entries written.

        Records holding dead letters are held, and remembered: they are refreshed
        once a redrive has applied their events (:meth:`_recheck_held`).
        """
        written, held = await cachefill.refresh(self.pool, cache, self.projector, keys)
        for tenant, tenant_held in held.items():
            room = MAX_HELD_KEYS - sum(len(v) for v in self._held.values())
            self._held[tenant].update(sorted(tenant_held)[: max(room, 0)])
        return written

    async def _recheck_held(self, cache: RecordCache, stop: asyncio.Event) -> None:
        """Refresh held keys once their dead letters are applied (or dropped)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HELD_RECHECK_SECONDS)
                return
            for tenant in list(self._held):
                keys = sorted(self._held[tenant])
                try:
                    still = await cachefill.held_keys(self.pool, self.projector, tenant, keys)
                    done = [k for k in keys if k not in still]
                    if done:
                        await cache.put_many(
                            await cachefill.committed_entries(self.pool, tenant, done)
                        )
                except Exception as exc:
                    if not is_retriable(exc):
                        log.exception("refreshing redriven keys failed")
                    continue  # tried again next round
                if still:
                    self._held[tenant] = still
                else:
                    del self._held[tenant]

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
                valid = [t for t in names if is_valid("tenant", t)]
                mine = await self._mine(valid)
                tenants = [t for t in valid if t in mine]
            for start in range(0, len(tenants), 100):
                chunk = tenants[start : start + 100]
                async with asyncio.timeout(5):
                    async with cache.redis.pipeline(transaction=False) as pipe:
                        for t in chunk:
                            pipe.zrevrange(hot_key(t), 0, WARM_KEYS - 1)
                        hot = await pipe.execute()
                keys: dict[str, list[Key]] = {}
                for tenant, members in zip(chunk, hot, strict=True):
                    parsed = [cachefill.split_key(m) for m in members]
                    keys[tenant] = [k for k in parsed if k is not None]
                for tenant, tenant_keys in keys.items():
                    if tenant_keys:
                        written += await cache.put_many(
                            await cachefill.committed_entries(self.pool, tenant, tenant_keys)
                        )
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


def _deleted_tenants(values: Iterable[bytes | None]) -> set[str]:
    """The tenants whose ``tenant.deleted`` is among raw log values (a cheap byte test
    first: most batches hold none)."""
    out: set[str] = set()
    for value in values:
        if not value or b"tenant.deleted" not in value:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or doc.get("type") != "tenant.deleted":
            continue
        tenant = doc.get("tenant")
        if isinstance(tenant, str) and is_valid("tenant", tenant):
            out.add(tenant)
    return out


def _record_keys(values: Iterable[bytes | None]) -> dict[str, set[Key]]:
    """Tenant → ``(collection, id)`` of the record events among raw log values."""
    out: dict[str, set[Key]] = defaultdict(set)
    for value in values:
        if not value:
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # the projector dead-letters it; nothing of ours to refresh
        if not isinstance(doc, dict) or (
            doc.get("type") not in RECORD_TYPES and doc.get("type") != ERASED
        ):
            continue
        tenant, subject = doc.get("tenant"), doc.get("subject")
        if not isinstance(tenant, str) or not is_valid("tenant", tenant):
            continue
        if not isinstance(subject, str):
            continue
        key = cachefill.split_key(subject)
        if key is not None:
            out[tenant].add(key)
    return out
