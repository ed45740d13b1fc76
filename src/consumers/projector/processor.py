"""The projector's Kafka loop: read a batch, fold it, commit it with its checkpoints.

Positions live in PostgreSQL beside the projection. On every assignment the
consumer seeks to the stored checkpoint; Kafka's committed offsets are only
written as a hint for lag tools (:mod:`.hints`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import RedisError

from consumers.projector.hints import OffsetHints
from consumers.projector.live import LivePublisher
from consumers.runtime import membership
from consumers.runtime.kafka import (
    MemberLoop,
    SeekToCheckpoints,
    caught_up,
    seek_to_stored,
    start_with_retry,
)
from eventfold import cachefill, datakeys, deadletters, placement, readmodel, tracing
from eventfold.backoff import Backoff
from eventfold.db import KeptConnection, fetch_checkpoints
from eventfold.deadletters import DeadLetter
from eventfold.faults import is_retriable
from eventfold.kafka import make_consumer, make_producer, stop_client
from eventfold.logs import correlation_id
from eventfold.metrics import Metrics
from eventfold.projection.batch import BatchResult, LogEvent, apply_batch, budget_sql, read_events
from eventfold.projection.redrive import redrive
from eventfold.settings import HOME_SERVER, Settings

log = logging.getLogger("eventfold.projector")

#: A log record as the fold takes it: ``(partition, offset, timestamp_ms, value)``.
RawRecord = tuple[int, int, int, bytes | None]
#: A fetch answer at least this large means a backlog: worth waiting briefly for more.
_BACKLOG_RECORDS = 100
#: How often the dead letter count (``eventfold_dlq_size``) is read again while none come:
#: a redrive by another process (the API, ``eventfold dlq``) lowers it.
DEAD_LETTER_REFRESH_SECONDS = 30.0
#: The longest pause between two retries of deferred tenants: what holds a tenant back
#: (a lock, a long statement) gives no signal when it goes, so its events wait at most
#: this long after it. A retry of a still-stuck tenant costs one time budget.
DEFERRED_RETRY_CAP_SECONDS = 5.0


class Projector(MemberLoop):
    """Folds the events topic into the tenant projections, exactly once per event."""

    name = "projector"

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
        self._checkpoint_name = group or f"{settings.consumer_group_prefix}.projector"
        #: The database server whose tenants this projector folds (``main`` alone
        #: when there is one): each server's projector reads the whole log in a
        #: Kafka group of its own and passes over the other servers' tenants.
        self.server = settings.database_server or HOME_SERVER
        self.group = placement.server_group(self._checkpoint_name, settings)
        self._directory = placement.directory(settings)
        self.caught_up = asyncio.Event()
        #: Set while the projector holds its assignment and consumes (readiness).
        self.ready = asyncio.Event()
        self._dlq: AIOKafkaProducer | None = None
        #: Tenants set aside as too slow; their events are deferred until a retry works.
        self.deferred: set[str] = set()
        #: Pushes each committed batch's applied events to the SSE streams (best effort).
        self.live = LivePublisher(settings)
        #: Kafka's committed offsets, written for lag tools (see :mod:`.hints`).
        self._hints = OffsetHints(self.topic)
        #: The connection batches are written on, kept from one batch to the next: a
        #: pooled one would need the budget set again in every batch (a round trip) and,
        #: its session changed, a reset when given back (another), two of the ~10 round
        #: trips of a small batch of live traffic. Kept, its session carries the budget.
        self._writer = KeptConnection(
            pool, budget_sql(settings.projector_tenant_budget_ms, local=False)
        )
        #: What was read and not applied yet: ``eventfold_processor_lag_seconds``.
        self._lag = metrics.lag_clock(self.name)

    @property
    def checkpoint_name(self) -> str:
        """The ``consumer`` column of this projector's checkpoint rows (the same on
        every server: each server's rows are its own)."""
        return self._checkpoint_name

    async def seek_to_checkpoints(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> None:
        """Position ``partitions`` at their stored checkpoints (the start when none)."""
        async with self.pool.acquire(timeout=10) as conn:
            stored = await fetch_checkpoints(conn, self.checkpoint_name, self.topic)
        seek_to_stored(consumer, partitions, stored)
        self._lag.assigned(tp.partition for tp in partitions)
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(tp.partition for tp in partitions)},
        )

    async def _run(self, stop: asyncio.Event, burst: bool, member: membership.Member) -> None:
        self.consumer = consumer = make_consumer(
            self.settings,
            group=self.group,
            client_id=f"eventfold-{self.name}",
            max_poll_records=self.settings.projector_batch_size,
            group_instance_id=member.instance_id,
        )
        consumer.subscribe([self.topic], listener=SeekToCheckpoints(self, consumer, self.ready))
        self._dlq = make_producer(self.settings, client_id=f"eventfold-{self.name}-dlq")
        await start_with_retry(self._dlq, stop)
        await start_with_retry(consumer, stop)
        await self._refresh_dead_letter_count()
        await self._check_versions()
        retrier = asyncio.create_task(self._retry_deferred(stop), name="projector-deferred")
        ahead: asyncio.Task[list[LogEvent]] | None = None
        try:
            while not stop.is_set():
                member.check()
                if ahead is None:
                    events = await self._read(consumer)
                else:
                    events = await self._topped_up(consumer, await ahead)
                    ahead = None
                if not events:
                    if await caught_up(consumer):
                        self.caught_up.set()
                        if burst:
                            return
                    continue
                self.caught_up.clear()
                # The next batch is fetched and decoded while this one waits on
                # PostgreSQL. Safe across a rebalance: a batch locks its checkpoint
                # rows and skips what another batch (or processor) applied already.
                ahead = asyncio.create_task(self._read(consumer), name="projector-read-ahead")
                with tracing.batch_span(
                    "projector batch",
                    (tracing.event_carrier(e.event) for e in events),
                    attributes={"messaging.consumer.group.name": self.group},
                ):
                    result = await self._apply_until_done(events, stop)
                if result is None:
                    return
                await self._after_batch(consumer, result)
                await self.live.submit(result.live)
                if result.deleted:
                    await self._purge(result.deleted)
        finally:
            for task in (retrier, ahead):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(asyncio.CancelledError):
                await self._hints.finish(consumer)
            await self._writer.drop()
            await stop_client(consumer.stop, "projector consumer")
            await self.live.close()
            if self._dlq is not None:
                await stop_client(self._dlq.stop, "projector dead-letter producer")

    async def _read(self, consumer: AIOKafkaConsumer) -> list[LogEvent]:
        """The next batch, decoded and personal data opened (empty when nothing came
        within the fetch wait)."""
        records = await self._next_batch(consumer)
        return await read_events(records, datakeys.cache(), self.pool) if records else []

    async def _topped_up(
        self, consumer: AIOKafkaConsumer, events: list[LogEvent]
    ) -> list[LogEvent]:
        """The batch read ahead, with what has come since it was read, up to the batch size.

        The read-ahead takes what is there while the batch before is written; under live
        traffic that is a few records, and what comes during the write would wait for
        that small batch's own write before being read. Taken now, without waiting, it
        goes in this batch: a write's way to readable is one batch shorter.
        """
        room = self.settings.projector_batch_size - len(events)
        if room <= 0:
            return events
        got = await consumer.getmany(timeout_ms=0, max_records=room)
        last: dict[int, int] = {}
        for e in events:
            last[e.partition] = max(last.get(e.partition, -1), e.offset)
        records = self._fresh(got, last)
        if not records:
            return events
        return events + await read_events(records, datakeys.cache(), self.pool)

    def _fresh(
        self, got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], last: dict[int, int]
    ) -> list[RawRecord]:
        """The records of ``got`` past ``last`` (partition → last offset a batch holds,
        updated). A rebalance between two fetches may seek a partition back to its
        checkpoint: records already in a batch must not come twice."""
        out: list[RawRecord] = []
        for tp, msgs in got.items():
            fresh = [m for m in msgs if m.offset > last.get(tp.partition, -1)]
            if fresh:
                self._lag.read(tp.partition, fresh[0].offset, fresh[0].timestamp)
                last[tp.partition] = fresh[-1].offset
                out += [(tp.partition, m.offset, m.timestamp, m.value) for m in fresh]
        return out

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> list[RawRecord]:
        """Up to ``projector_batch_size`` records, from every partition with data.

        ``getmany`` hands back whatever the prefetch buffer holds, often a
        hundred records; while catching up, waiting a few milliseconds for more
        makes far fewer, fuller transactions. A small answer means there is no
        backlog (live traffic): waiting would only add latency to every write's
        way to readable, so the batch goes as it is.
        """
        limit = self.settings.projector_batch_size
        batch: list[RawRecord] = []
        last: dict[int, int] = {}
        timeout_ms, deadline = 250, time.monotonic() + 0.27
        while len(batch) < limit and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=timeout_ms, max_records=limit - len(batch))
            if not got:
                break
            fresh = self._fresh(got, last)
            batch += fresh
            if len(fresh) < _BACKLOG_RECORDS:
                break
            timeout_ms, deadline = 5, min(deadline, time.monotonic() + 0.02)
        return batch

    async def _apply_until_done(
        self, events: list[LogEvent], stop: asyncio.Event
    ) -> BatchResult | None:
        """Apply a batch; retry while a dependency is away, go careful on bad data.

        A failure that is not retriable means some event in the batch cannot be
        applied: the batch is applied again with one savepoint per event, and
        the failing events become dead letters instead of stopping the partition.
        """
        backoff = Backoff(0.2, 10.0)
        careful = by_tenant = False
        budget = self.settings.projector_tenant_budget_ms
        elsewhere: frozenset[str] | None = None
        while True:
            started = time.perf_counter()
            try:
                if elsewhere is None:
                    elsewhere = await self._elsewhere(events)
                try:
                    result = await apply_batch(
                        await self._writer.get(),
                        consumer=self.checkpoint_name,
                        topic=self.topic,
                        events=events,
                        careful=careful,
                        by_tenant=by_tenant,
                        deferred=frozenset(self.deferred),
                        budget_ms=budget,
                        budget_in_session=True,
                        on_dead_letters=self._send_dead_letters,
                        # Tenants' state is read on a second connection while this one writes.
                        reads=None if careful or by_tenant else self.pool,
                        elsewhere=elsewhere,
                        homeless_here=self.server == HOME_SERVER,
                        moves=not self._directory.single,
                    )
                except BaseException:
                    await self._writer.drop()  # whatever failed, the next attempt starts afresh
                    raise
            except (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError) as exc:
                if by_tenant:
                    raise  # outside any tenant's work: a checkpoint lock held elsewhere
                # Some tenant ran out of its time budget: isolate tenants, defer the slow one.
                log.warning(
                    "batch over its time budget, isolating tenants", extra={"error": repr(exc)}
                )
                by_tenant = True
                continue
            except Exception as exc:
                if not is_retriable(exc):
                    if careful:
                        raise  # the careful path itself failed: a bug, let the supervisor see it
                    log.warning(
                        "batch failed on its data, applying it event by event",
                        extra={"error": repr(exc)},
                    )
                    careful = True
                    continue
                self.metrics.dependency_errors.labels("postgres").inc()
                log.warning("batch not applied, retrying", extra={"error": repr(exc)})
                if await backoff.sleep(stop):
                    return None
                continue
            self.metrics.projector_batch_seconds.observe(time.perf_counter() - started)
            if result.deferred:
                log.warning(
                    "tenants deferred as too slow", extra={"tenants": sorted(result.deferred)}
                )
                self.deferred |= result.deferred
            return result

    async def _elsewhere(self, events: Sequence[LogEvent]) -> frozenset[str]:
        """The batch's tenants placed on another database server than this projector's."""
        if self._directory.single:
            return frozenset()
        tenants = {e.event.tenant for e in events if e.event is not None and e.event.tenant}
        servers = await self._directory.servers_of(tenants)
        return frozenset(t for t, server in servers.items() if server != self.server)

    async def _purge(self, tenants: set[str]) -> None:
        """Drop the Redis keys of tenants this batch deleted, once it has committed.

        The cache processor purges them too when it reaches ``tenant.deleted``; done
        here as well, the keys go with the deletion's commit whatever that processor's
        state (it was seen far behind on a loaded machine). Best effort: a Redis that is
        away leaves the purge to the cache processor.
        """
        try:
            await cachefill.purge_tenants(self.settings, tenants)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("deleted tenants' keys not purged", extra={"error": repr(exc)})

    async def _retry_deferred(self, stop: asyncio.Event) -> None:
        """Retry deferred tenants in the background, with backoff, in record order.

        It also refreshes the dead letter count every :data:`DEAD_LETTER_REFRESH_SECONDS`.
        """
        backoff = Backoff(1.0, DEFERRED_RETRY_CAP_SECONDS)
        counted_at = time.monotonic()
        while not stop.is_set():
            if await backoff.sleep(stop):
                return
            try:
                async with self.pool.acquire(timeout=5) as conn:
                    waiting = await deadletters.deferred_tenants(conn, self.checkpoint_name)
                for tenant in sorted(waiting):
                    await redrive(
                        self.pool,
                        self.checkpoint_name,
                        tenant=tenant,
                        deferred_only=True,
                        budget_ms=self.settings.projector_tenant_budget_ms,
                        topic=self.topic,
                    )
                    self.deferred.discard(tenant)
                    log.info("deferred tenant caught up", extra={"tenant": tenant})
                backoff.reset()
                if waiting or time.monotonic() - counted_at >= DEAD_LETTER_REFRESH_SECONDS:
                    counted_at = time.monotonic()
                    await self._refresh_dead_letter_count()
            except Exception as exc:
                if not is_retriable(exc):
                    log.exception("retrying deferred tenants failed")

    async def _send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Send dead letters to the dead-letter topic, with their error, before commit."""
        assert self._dlq is not None
        futures = []
        for p in letters:
            headers = [
                ("eventfold-error", p.error.encode()),
                ("eventfold-source", f"{self.topic}:{p.partition}:{p.offset}".encode()),
                ("eventfold-consumer", self.checkpoint_name.encode()),
            ]
            if p.behind:
                headers.append(("eventfold-parked-behind", p.behind.encode()))
            cid = _correlation(p.raw)
            if cid:
                headers.append(("x-request-id", cid.encode()))
            futures.append(
                await self._dlq.send(
                    self.settings.dlq_topic,
                    value=p.raw,
                    key=f"{p.tenant}/{p.key}".encode(),
                    headers=headers,
                )
            )
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        for p in letters:
            # The line carries the request that published the event (its correlationid).
            token = correlation_id.set(_correlation(p.raw))
            try:
                log.error(
                    "event dead-lettered",
                    extra={
                        "tenant": p.tenant,
                        "event_id": p.event_id,
                        "key": p.key,
                        "error": p.error,
                    },
                )
            finally:
                correlation_id.reset(token)

    async def _check_versions(self) -> None:
        """Warn about tenant schemas built by another projection version.

        New events keep being folded into them (refusing would stop every
        tenant); ``eventfold replay --outdated`` rebuilds them blue-green so the
        old and new shapes are never mixed for long.
        """
        try:
            async with self.pool.acquire(timeout=10) as conn:
                outdated = await readmodel.outdated_tenants(conn)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.info("projection versions not checked", extra={"error": repr(exc)})
            return
        self.metrics.projection_outdated.set(len(outdated))
        if outdated:
            log.warning(
                "tenant projections built by another projection version: run"
                " `eventfold replay --outdated`",
                extra={
                    "tenants": sorted(outdated)[:50],
                    "count": len(outdated),
                    "version": readmodel.PROJECTION_VERSION,
                },
            )

    async def _refresh_dead_letter_count(self) -> None:
        try:
            async with self.pool.acquire(timeout=5) as conn:
                held = await deadletters.count(conn, self.checkpoint_name)
            self.metrics.projector_parked.set(held)
            self.metrics.dlq_size.labels(self.name).set(held)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.info("dead letter count not refreshed", extra={"error": repr(exc)})

    async def _after_batch(self, consumer: AIOKafkaConsumer, result: BatchResult) -> None:
        m = self.metrics
        m.projector_events.labels("applied").inc(result.applied)
        m.projector_events.labels("rejected").inc(result.rejected)
        m.projector_events.labels("duplicate").inc(result.duplicates)
        m.projector_events.labels("parked").inc(len(result.dead_letters))
        self._lag.applied(result.positions)
        for tenant, count in collections.Counter(e.tenant for e in result.live).items():
            m.top_tenant_events.add(tenant, count)
        if result.dead_letters:
            await self._refresh_dead_letter_count()
        if result.newest_event_time is not None:
            m.projection_lag_seconds.set(
                max(0.0, time.time() - result.newest_event_time.timestamp())
            )
        self._hints.note(consumer, result.positions)
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                pos = result.positions.get(tp.partition)
                if pos is not None:
                    m.consumer_lag.labels(self.name, str(tp.partition)).set(max(0, high - pos))


def _correlation(raw: bytes | None) -> str | None:
    """The ``correlationid`` of an envelope as it is in the log (None when absent or unreadable)."""
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("correlationid") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None
