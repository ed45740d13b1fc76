"""The analytics processor: a faust-streaming app run on our own event loop.

faust's ``Worker`` wants to own the loop and the process (signals, logging), so
we do not use it: the processor builds a ``faust.App`` from the settings and
starts its services with ``await app.start()`` on the running loop, next to the
other processors of ``eventfold run``, and stops it with ``await app.stop()``.

State: three faust tables with changelog topics, each key written only from
the source partition of the events it counts (so it is restored with it):

- ``counts``: per tenant / window size / window start / type / collection /
  source partition → (events counted, last source offset counted);
- ``touched``: per tenant / window / start / collection / record subject → its
  partition: the distinct records an event touched in the window;
- ``seen``: per tenant + event id → (offset of its first record, partition,
  event time), so a duplicate (a producer retry, a republished id) is not
  counted twice.

With ``processing_guarantee="exactly_once"`` each partition's offsets are
committed in a Kafka transaction; the tables are written behind and sent to
their changelogs inside that transaction, which commits the positions the
worker applied (not faust's own offset bookkeeping: see ``changelog.py``), so a
worker killed mid-window restarts from the last committed transaction with the
tables restored to exactly that point: no count lost or doubled. Partitions
revoked in a rebalance are committed before they go, so the local tables never
hold more than their changelogs. Each partition is applied in offset order from
its committed offset (a record faust dropped would otherwise be committed past:
see ``recovery.py``), and the worker is a static member of its group
(``consumers.runtime.membership``): restarted after a SIGKILL, it restores its tables
(ended at each changelog's last committed record) and counts on within seconds.

Served reads: a flush task copies the absolute value of every changed counter
to a per-tenant Redis hash (``ef:{tenant}:analytics:{w}:{start}``) and every
newly touched record to a Redis set per window and collection, with an expiry =
the window retention. Absolute values and set members make the copy
idempotent: a rewrite after a restart writes the same numbers.

Pruning: once a window can no longer change (closed longer than the grace ago),
its counters and touched records leave the tables (their Redis copies stay
until their expiry), and so do the ``seen`` ids too old to be counted again.
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
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis
from redis.exceptions import WatchError

from consumers.analytics.changelog import OwnedCommits, WriteBehindTable
from consumers.analytics.delivery import deliver_eagerly
from consumers.analytics.recovery import (
    committed_positions,
    records_between,
    restore_to_last_record,
    resume_streams_after_clear,
)
from consumers.runtime import membership
from consumers.runtime.membership import leave_on_stop
from eventfold.analytics_windows import (
    WINDOWS,
    CountKey,
    collection_of,
    decode_touched,
    index_key,
    records_key,
    settled,
    touched_key,
    window_key,
)
from eventfold.clients import redis_client
from eventfold.errors import RetriableError
from eventfold.faults import is_retriable
from eventfold.kafka import (
    TopicSpec,
    create_missing_topics,
    heartbeat_ms,
    stop_client,
    wait_until_served,
)
from eventfold.metrics import Metrics
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.settings import Settings
from eventfold.tenancy import DELETED_TENANTS_KEY

log = logging.getLogger(__name__)


class RecordsSkipped(RetriableError):
    """Records of the source never reached the processor: it must read them again."""


class WorkerCrashed(RetriableError):
    """faust stopped a service of the app (its consumer, an agent) on an error it raised:
    the app counts nothing more, so the processor starts again (restoring its tables)."""


def _flush_failed(exc: Exception, msg: str) -> None:
    """Log a failed copy to Redis: one line for Redis away (every second while it is),
    the traceback for anything else."""
    if is_retriable(exc):
        log.warning(msg, extra={"error": repr(exc)})
    else:
        log.warning(msg, exc_info=exc)


def bounded_thread_stop(thread: Any) -> None:
    """Make faust's consumer ``thread`` stop its aiokafka consumer through
    :func:`~eventfold.kafka.stop_client`.

    Its ``on_thread_stop`` raising (aiokafka's stop does, with the broker gone) skips the
    rest of the thread's shutdown, and the app then waits 15 s for a thread that never
    says it stopped, with a traceback on stderr.
    """
    stop = thread.on_thread_stop

    async def on_thread_stop() -> None:
        await stop_client(stop, "analytics consumer")

    thread.on_thread_stop = on_thread_stop


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


def first_offset(seen: Any) -> int | None:
    """The offset in a ``seen`` value: ``[offset, partition, time]``, or an offset alone
    (the first version of the table)."""
    if isinstance(seen, list | tuple):
        return int(seen[0])
    return None if seen is None else int(seen)


def is_first_record(seen: Any, partition: int, offset: int) -> bool:
    """Whether the record at ``partition``/``offset`` is the one ``seen`` remembers.

    Offsets are per partition: a duplicate on another partition can sit at the
    very offset of its original, so both are compared. An entry of the first
    version of the table holds an offset alone (ids were only met again on
    their own partition then): the offset decides.
    """
    if isinstance(seen, list | tuple):
        return int(seen[0]) == offset and int(seen[1]) == partition
    return first_offset(seen) == offset


class RawSchema(faust.Schema[Any, Any]):
    """Keys and values as the log holds them: bytes, handed over without a codec.

    With ``key_serializer="raw"`` faust still looked each record's key and value up
    in its codec registry (a few microseconds each, per record); the processor
    reads the record's bytes itself (:meth:`Analytics.count`).
    """

    def loads_key(self, app: Any, message: Any, **_: Any) -> Any:
        """The record's key bytes."""
        return message.key

    def loads_value(self, app: Any, message: Any, **_: Any) -> Any:
        """The record's value bytes."""
        return message.value


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
            topic_replication_factor=settings.kafka_replication_factor,
            # As the other processors (eventfold.kafka): a crashed worker that does not
            # come back has its partitions moved on after the session (10 s by default),
            # not faust's default minute.
            broker_session_timeout=settings.kafka_session_timeout_seconds,
            broker_heartbeat_interval=heartbeat_ms(settings) / 1000,
            # The tables' changelog writes go out at commit, thousands at once: with no
            # linger the producer sent nearly one request per write (16,591 sends for
            # 20,000 events), its CPU more than the counting's. 5 ms gathers them into
            # a few requests; a commit waits for them anyway.
            producer_linger=0.005,
        )
        # faust turns exactly_once (transactions) on only inside its own Worker, which
        # we do not use (see the module docstring): this app is the worker's app.
        self.app.in_worker = True
        # faust creates its data dir without parents (the memory store keeps nothing there).
        Path(self.app.conf.datadir).mkdir(parents=True, exist_ok=True)
        self.topic = self.app.topic(
            settings.events_topic, schema=RawSchema(), partitions=settings.topic_partitions
        )
        partitions = settings.topic_partitions
        self.counts = WriteBehindTable(self.app.Table("counts", partitions=partitions))
        self.touched = WriteBehindTable(self.app.Table("touched", partitions=partitions))
        self.seen = WriteBehindTable(self.app.Table("seen", partitions=partitions))
        #: counters and touched records changed since the last copy to Redis
        self._dirty: set[str] = set()
        self._dirty_touched: set[str] = set()
        #: set when a count changed: an idle flusher copies it at once
        self._changed = asyncio.Event()
        self.commits = OwnedCommits(
            settings.events_topic,
            list(self.tables().values()),
            self.assigned,
            lambda: bool(self.app.rebalancing),
        )
        self._newest_log_ms = 0
        self._started = False
        #: partition -> (first offset missing, offset delivered instead): stop and read again
        self._halted: dict[int, tuple[int, int]] = {}
        self.app.agent(self.topic, name="analytics-count")(self._agent)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            if not await self._in_order(msg.partition, msg.offset):
                continue
            self.count(msg.value, msg.partition, msg.offset, msg.timestamp)
            self.commits.applied(msg.partition, msg.offset)

    async def _on_revoked(self, app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]
        # faust stops the revoked partitions' transactional producers next, which
        # aborts what their open transactions hold; the local tables (faust's memory
        # store keeps them) must not keep writes their changelogs lose. So those
        # partitions commit now, and a failure stops the worker (a new process
        # restores from the changelogs) rather than let the two disagree.
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.events_topic}
        if not partitions:
            return
        await self.commits.commit(partitions=partitions, start_new_transaction=False)
        self.commits.forget(partitions)

    async def _on_assigned(self, app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Once restored, every assigned partition is read again from its committed
        # offset: the first record to apply, so a record missing there is a gap too.
        topic = self.settings.events_topic
        assigned = [TopicPartition(topic, tp.partition) for tp in args[0] if tp.topic == topic]
        if not assigned:
            return
        try:
            starts = await committed_positions(
                self.settings.kafka_bootstrap, app_id(self.settings), assigned
            )
        except Exception:  # faust would crash the app: the order check waits for the next one
            log.warning("analytics: committed offsets not read; order not checked", exc_info=True)
            return
        for tp, offset in starts.items():
            self.commits.start(tp.partition, offset)

    async def _in_order(self, partition: int, offset: int) -> bool:
        """Whether the record at ``partition``/``offset`` may be applied now.

        Records are applied in offset order (see :class:`OwnedCommits`). One past
        the expected offset is checked against the log: offsets holding no
        committed record (transaction markers) are passed; a record there never
        reached the processor, so this partition applies nothing more and the
        processor starts again from the committed positions.
        """
        if partition in self._halted:
            return False
        expected = self.commits.expected(partition)
        if expected is None or offset <= expected:
            return True
        tp = TopicPartition(self.settings.events_topic, partition)
        if not await records_between(self.settings.kafka_bootstrap, tp, expected, offset):
            return True
        self._halted[partition] = (expected, offset)
        self.metrics.analytics_events.labels("skipped").inc()
        log.error(
            "analytics: records never reached the processor; starting again",
            extra={"partition": partition, "first": expected, "next_delivered": offset},
        )
        return False

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
        # ``seen`` holds the position of an id's first record: another record with the
        # same id is a duplicate; the same record again is a re-delivery after a crash.
        seen_key = f"{tenant}\x1f{event_id}"
        first = self.seen.get(seen_key)
        if first is not None and not is_first_record(first, partition, offset):
            return "duplicate"
        log_ms = int(log_ts * 1000) if log_ts < 1e11 else int(log_ts)
        ts = event_time(doc, log_ms)
        now = time.time()
        subject = doc.get("subject")
        subject = subject if isinstance(subject, str) else None
        collection = collection_of(subject)
        counted = False
        for window, size in WINDOWS.items():
            start = int(ts // size) * size
            # A late event counts while its window closed less than the grace ago.
            if start + size + self.settings.analytics_grace_seconds < now:
                continue
            key = CountKey(tenant, window, start, type_, collection, partition).encode()
            # Each counter remembers the last offset it counted: a transaction may hold
            # the writes of events past the offsets it commits, and those events are
            # re-delivered after a crash. Only one partition writes a key, in offset order.
            current = self.counts.get(key)
            if current is not None and current[1] >= offset:
                continue
            self.counts.put(key, ((current[0] if current else 0) + 1, offset), partition)
            self._dirty.add(key)
            counted = True
            if collection and subject is not None:
                touched = touched_key(tenant, window, start, collection, subject)
                if self.touched.get(touched) is None:
                    self.touched.put(touched, partition, partition)
                    self._dirty_touched.add(touched)
        if first is None:
            self.seen.put(seen_key, (offset, partition, int(ts)), partition)
        self._newest_log_ms = max(self._newest_log_ms, log_ms)
        if counted:
            self._changed.set()
        return "counted" if counted else "late"

    def tables(self) -> dict[str, WriteBehindTable]:
        """The processor's tables by name."""
        return {"counts": self.counts, "touched": self.touched, "seen": self.seen}

    def assigned(self) -> set[int]:
        """Partitions of the event topic this worker holds now."""
        return {
            tp.partition
            for tp in self.app.consumer.assignment()
            if tp.topic == self.settings.events_topic
        }

    def prune(self, now: float, assigned: set[int]) -> int:
        """Drop the table state no event can change any more; the number of keys dropped.

        Only keys of ``assigned`` partitions: a tombstone goes to the changelog
        partition of the key, inside that partition's next transaction.
        """
        grace = self.settings.analytics_grace_seconds
        dropped = 0
        for raw, _ in self.counts.items():
            key = CountKey.decode(raw)
            if key.partition in assigned and settled(key.window, key.start, grace, now):
                self.counts.delete(raw, key.partition)
                dropped += 1
        for raw, partition in self.touched.items():
            _, window, start, _, _ = decode_touched(raw)
            if partition in assigned and settled(window, start, grace, now):
                self.touched.delete(raw, partition)
                dropped += 1
        # A duplicate carries its original's time: once every window of that time is
        # settled, a duplicate would be late anyway and the id need not be kept.
        longest = max(WINDOWS, key=WINDOWS.__getitem__)
        size = WINDOWS[longest]
        for raw, value in self.seen.items():
            if not isinstance(value, list | tuple):
                continue  # an entry of the first version (an offset alone): kept
            _, partition, ts = value
            if partition in assigned and settled(longest, int(ts // size) * size, grace, now):
                self.seen.delete(raw, partition)
                dropped += 1
        return dropped

    async def flush(self, redis: Redis, keys: set[str], touched: set[str]) -> None:
        """Copy the counters ``keys`` and the ``touched`` records to Redis (idempotent).

        Deleted tenants are skipped: one transaction, watching the set of deleted
        tenants, so a copy that lags behind a tenant's deletion (its events on
        other partitions) cannot write its keys back after the purge.
        """
        if not keys and not touched:
            return
        counts = [(raw, CountKey.decode(raw)) for raw in keys]
        records = [decode_touched(raw) for raw in touched]
        tenants = sorted({k.tenant for _, k in counts} | {r[0] for r in records})
        async with redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(DELETED_TENANTS_KEY)
                    flags = await pipe.smismember(DELETED_TENANTS_KEY, tenants)
                    deleted = {t for t, gone in zip(tenants, flags, strict=True) if gone}
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._copy(pipe, counts, records, deleted)
                    await pipe.execute()
                    break
                except WatchError:
                    continue  # a tenant was deleted meanwhile: look again
        if self._newest_log_ms:
            self.metrics.analytics_lag_seconds.set(
                max(0.0, time.time() - self._newest_log_ms / 1000)
            )
        for name, table in self.tables().items():
            self.metrics.analytics_table_keys.labels(name).set(len(table))

    def _copy(
        self,
        pipe: Any,
        counts: list[tuple[str, CountKey]],
        records: list[tuple[str, str, int, str, str]],
        deleted: set[str],
    ) -> None:
        """Queue the writes of :meth:`flush` on ``pipe``, leaving out ``deleted`` tenants."""
        retention = {
            "1m": self.settings.analytics_retention_1m_seconds,
            "1h": self.settings.analytics_retention_1h_seconds,
        }
        windows: set[tuple[str, str, int]] = set()
        for raw, key in counts:
            current = self.counts.get(raw)
            if current is None or key.tenant in deleted:
                continue  # pruned (a settled window, its copy in Redis is final), or gone
            pipe.hset(window_key(key.tenant, key.window, key.start), key.field, int(current[0]))
            windows.add((key.tenant, key.window, key.start))
        for tenant, window, start, collection, subject in records:
            if tenant in deleted:
                continue
            rkey = records_key(tenant, window, start, collection)
            pipe.sadd(rkey, subject)
            pipe.expireat(rkey, start + WINDOWS[window] + retention[window])
        for tenant, window, start in windows:
            pipe.expireat(
                window_key(tenant, window, start), start + WINDOWS[window] + retention[window]
            )
            pipe.zadd(index_key(tenant, window), {str(start): start})
            pipe.zremrangebyscore(
                index_key(tenant, window), "-inf", time.time() - retention[window]
            )

    async def _flusher(self, redis: Redis, stop: asyncio.Event) -> None:
        # Copies start as soon as a count changes and are at least ``flush_ms`` apart:
        # an idle worker's counts are readable within milliseconds, a busy worker's
        # copies batch the changes of ``flush_ms``.
        interval = self.settings.analytics_flush_ms / 1000
        copied_after: int | None = None  # the rebalance the last full copy followed
        pruned_at = time.monotonic()
        while not stop.is_set():
            rebalancing = bool(self.app.rebalancing)
            rebalances = int(self.app.rebalancing_count)
            if not rebalancing and rebalances != copied_after:
                # Partitions (re)assigned and their tables restored from the
                # changelogs: copy everything once, in case a crash came between a
                # committed transaction and its flush. Counted, not sampled: a
                # rebalance and its restore may both fall between two looks.
                copied_after = rebalances
                self._dirty.update(str(k) for k, _ in self.counts.items())
                self._dirty_touched.update(str(k) for k, _ in self.touched.items())
            prune_due = time.monotonic() - pruned_at >= self.settings.analytics_prune_seconds
            if not rebalancing and prune_due:
                pruned_at = time.monotonic()
                # Only partitions with a position: their tombstones commit with it.
                pruned = self.prune(time.time(), self.assigned() & set(self.commits.positions))
                if pruned:
                    log.info("analytics: pruned %d keys of settled windows", pruned)
                self.metrics.analytics_pruned.inc(pruned)
            self._changed.clear()
            copied_at = time.monotonic()
            keys, self._dirty = self._dirty, set()
            touched, self._dirty_touched = self._dirty_touched, set()
            try:
                await self.flush(redis, keys, touched)
            except Exception as exc:  # Redis away: keep the keys, try again
                _flush_failed(exc, "analytics flush failed; retrying")
                self._dirty |= keys
                self._dirty_touched |= touched
            with contextlib.suppress(TimeoutError):
                # Wake on the next change (or to check rebalances and pruning).
                await asyncio.wait_for(self._changed.wait(), 1.0)
            pause = interval - (time.monotonic() - copied_at)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        try:
            await self.flush(redis, self._dirty, self._dirty_touched)
        except Exception as exc:
            # Nothing is lost: the counts are in the tables (and their changelogs), and
            # the next start copies every count to Redis once.
            _flush_failed(exc, "analytics last flush failed; the next start copies all counts")

    async def _caught_up(self) -> bool:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await consumer.start()
        try:
            parts = [
                TopicPartition(self.settings.events_topic, p)
                for p in consumer.partitions_for_topic(self.settings.events_topic) or ()
            ]
            ends = await consumer.end_offsets(parts)
        finally:
            await stop_client(consumer.stop, "analytics end-offsets consumer")
        positions = self.commits.positions
        return all(positions.get(tp.partition, 0) >= end for tp, end in ends.items() if end)

    def is_ready(self) -> bool:
        """Whether the worker consumes: assigned, its tables restored, not rebalancing,
        and no service of the app crashed."""
        return (
            self._started
            and not self.app.rebalancing
            and self._recovered()
            and self._crash_reason() is None
        )

    def _crash_reason(self) -> BaseException | None:
        """Why faust crashed the app or its consumer (None while neither did).

        mode marks a crashed service and its parents and logs the reason, but with no
        faust Worker around nothing stops the app: its consumer is gone and the loop
        of :meth:`_run` would go on committing nothing, ready in name only.
        """
        for service in (self.app.consumer, self.app):
            reason: BaseException | None = service.crash_reason
            if reason is not None:
                return reason
        return None

    def _check_not_crashed(self) -> None:
        """Raise :class:`WorkerCrashed` once a service of the app crashed."""
        reason = self._crash_reason()
        if reason is not None:
            raise WorkerCrashed(f"the faust app crashed: {reason!r}")

    async def declare_changelogs(self) -> None:
        """Create the tables' changelog topics and wait until they are served, before the
        app subscribes to them.

        faust creates them itself as it starts and subscribes right after: a worker
        whose first metadata answer came before a new changelog was served went on
        without it until its next metadata refresh, minutes later. Leading the group's
        next rebalance, it assigned that changelog no topic group, and the next write
        to it crashed faust's consumer (a ``KeyError`` in the assignor): seen when one
        of two fresh workers was killed and the other took its partitions over.
        """
        s = self.settings
        specs = [
            # faust's settings for a table's changelog: compacted, as many partitions
            # as the source, the app's replication factor.
            TopicSpec(
                table.table.changelog_topic.get_topic_name(),
                s.topic_partitions,
                s.kafka_replication_factor,
                {"cleanup.policy": "compact"},
            )
            for table in self.tables().values()
        ]
        admin = AIOKafkaAdminClient(
            bootstrap_servers=s.kafka_bootstrap, client_id="eventfold-analytics-topics"
        )
        await admin.start()
        try:
            await create_missing_topics(admin, specs)
            await wait_until_served(admin, specs)
        finally:
            await admin.close()

    def _recovered(self) -> bool:
        """Whether faust's first recovery (table restore) has completed."""
        tables: Any = self.app.tables
        return bool(tables.recovery.completed.is_set())

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Run the faust app on this loop until ``stop`` (or, in burst mode, caught up)."""
        stop = stop or asyncio.Event()
        # A static member of the app's group (see consumers.runtime.membership): restarted after
        # a SIGKILL, the worker gets its partitions back without waiting for the session.
        async with membership.claim(self.settings.database_url, app_id(self.settings), stop) as m:
            self.app.conf.consumer_group_instance_id = m.instance_id
            try:
                await self._run(stop, burst, m)
            finally:
                self._started = False

    async def _run(self, stop: asyncio.Event, burst: bool, member: membership.Member) -> None:
        redis = redis_client(self.settings)
        flush_stop = asyncio.Event()
        self.commits.install(self.app.consumer)
        deliver_eagerly(self.app.consumer)
        restore_to_last_record(self.app.consumer, self.settings.kafka_bootstrap)
        resume_streams_after_clear(self.app, self.settings.kafka_bootstrap)
        await self.declare_changelogs()
        await self.app.start()
        # faust's aiokafka consumer, started with the app: it leaves the group on stop.
        consumer: Any = self.app.consumer
        leave_on_stop(consumer._thread._ensure_consumer())
        bounded_thread_stop(consumer._thread)
        self._started = True
        flusher = asyncio.create_task(self._flusher(redis, flush_stop))
        interval = self.app.conf.broker_commit_interval
        committed_at = time.monotonic()
        try:
            while not stop.is_set():
                member.check()
                self._check_not_crashed()
                if self._halted:
                    first, delivered = next(iter(self._halted.values()))
                    raise RecordsSkipped(
                        f"records from {first} to {delivered - 1} of a partition never reached"
                        " the processor"
                    )
                if not self.app.rebalancing and time.monotonic() - committed_at >= interval:
                    committed_at = time.monotonic()
                    await self.commits.commit()
                if burst and not self.app.rebalancing and await self._caught_up():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            flush_stop.set()
            self._changed.set()  # wake an idle flusher for its last copy
            try:
                await flusher
            finally:
                # Whatever the flusher raised: a faust app left running keeps its
                # agents' supervisors restarting them on this loop, and the process
                # never ends (seen with Redis away at SIGTERM).
                await self.app.stop()
                await redis.aclose()
