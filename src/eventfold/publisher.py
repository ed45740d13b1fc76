"""Publishing events to the log: idempotent, acks=all, keyed by tenant + subject.

Every publish has a deadline (:class:`SendPolicy`). A send that ends in an
indefinite error (a timeout, a lost connection, a producer that broke) may or
may not have been written: the producer is replaced (the old one closed in the
background), and the same envelopes, same ids, are sent again with backoff and
jitter, a bounded number of times, before the client gets a 503. A write sent
twice lands twice in the log at worst; the projector's dedup by event id keeps
its effect single.

The gateway remembers every event id it published (in Redis, for a bounded
time), so a retried publish answers ``duplicate: true`` with the original
position instead of writing again. Only a *confirmed* publish is remembered:
an id is never answered as a duplicate on the strength of a publish still in
flight (or one whose gateway died), since that publish may yet fail and the
client would hold an acknowledgement for a write that is not in the log.
Redis is an optimisation here, not the guarantee: when it is down or slow
(a circuit breaker, :class:`eventfold.breaker.Breaker`, skips it for a few
seconds after a failure) the
event is published and the projector's dedup by event id keeps the effect single.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from eventfold import actors, consistency, tracing
from eventfold.backoff import Backoff
from eventfold.breaker import Breaker
from eventfold.datakeys import Sealer
from eventfold.dedup import DEDUP_TTL_SECONDS, dedup_key
from eventfold.envelope import CloudEvent
from eventfold.errors import Unavailable
from eventfold.faults import send_outcome_unknown
from eventfold.kafka import message_key
from eventfold.kafkabatch import send_batched
from eventfold.logs import correlation_id
from eventfold.metrics import Metrics
from eventfold.redispipe import AutoPipeline

log = logging.getLogger("eventfold.publisher")

ProducerFactory = Callable[[], AIOKafkaProducer]
#: Told the ``(partition, offset)`` of every event Kafka acknowledged.
AckListener = Callable[[Iterable[tuple[int, int]]], None]

#: Publishes of at least this many new events go out as one record batch per
#: partition (:mod:`eventfold.kafkabatch`); fewer share the producer's open batches.
BATCHED_SEND_MIN = 16


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """Deadlines and retries of one publish (seconds)."""

    #: One attempt: getting a started producer, sending, and every acknowledgement.
    attempt_timeout: float = 6.0
    #: The whole publish, retries and pauses included; past it the client gets a 503.
    deadline: float = 12.0
    max_attempts: int = 4
    #: Starting a replacement producer (bootstrap round-trip included).
    start_timeout: float = 5.0
    #: Closing a retired producer in the background (it may try to flush first).
    stop_timeout: float = 10.0
    backoff: float = 0.2
    backoff_cap: float = 2.0
    #: Each Redis round-trip of the dedup (sent in a batch with other requests' commands,
    #: it ends by the earliest deadline of the batch).
    redis_timeout: float = 1.5
    #: How long the dedup is skipped after Redis failed (the circuit is open).
    redis_open_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class Published:
    """Where one event landed in the log."""

    id: str
    partition: int | None
    offset: int | None
    duplicate: bool

    def as_dict(self) -> dict[str, Any]:
        """The item of the 202 answer's ``events`` list."""
        return {
            "id": self.id,
            "partition": self.partition,
            "offset": self.offset,
            "duplicate": self.duplicate,
        }


def consistency_token(results: Sequence[Published]) -> str:
    """The token a read sends back to see at least these published events."""
    return consistency.from_offsets(
        [
            (r.partition, r.offset)
            for r in results
            if r.partition is not None and r.offset is not None
        ]
    )


class Publisher:
    """Sends stamped envelopes to the events topic and reports their positions.

    Owns its producer: :meth:`start` before the first publish, :meth:`stop` at
    the end; in between it replaces a producer whose sends stopped ending well.
    """

    def __init__(
        self,
        factory: ProducerFactory,
        redis: Redis | None,
        metrics: Metrics,
        *,
        topic: str,
        policy: SendPolicy | None = None,
        on_acked: AckListener | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self._factory = factory
        #: Encrypts events of personal collections (eventfold.datakeys) before they go out.
        self._sealer = sealer
        #: Learns where the log reaches (eventfold.logend), without asking Kafka.
        self._on_acked = on_acked
        #: Dedup commands share the process's pipeline with other requests' commands.
        self._pipe = AutoPipeline.shared(redis) if redis is not None else None
        self._metrics = metrics
        self._topic = topic
        self._policy = policy or SendPolicy()
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        #: Opens on a Redis failure: the dedup is skipped for ``redis_open_seconds``.
        self._redis_breaker = Breaker(
            failures=1,
            cooldown=self._policy.redis_open_seconds,
            name="dedup",
            fallback="publishing without the dedup",
        )
        #: How many producers were replaced (for tests and logs).
        self.renewals = 0

    # -- producer life cycle -------------------------------------------------

    async def start(self) -> None:
        """Start the first producer (one bounded attempt; the caller retries)."""
        await self._ready_producer()

    async def stop(self) -> None:
        """Close the producer (flushing what it holds) and wait for retired ones, bounded."""
        producer, self._producer = self._producer, None
        if producer is not None:
            self._retire(producer)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=self._policy.stop_timeout + 1)
        if self._sealer is not None:
            await self._sealer.close()

    async def check(self) -> None:
        """Readiness: the current producer gets cluster metadata (raises otherwise)."""
        producer = self._producer
        if producer is None or _broken(producer):
            raise ConnectionError("no connected producer")
        await producer.client.fetch_all_metadata()

    async def _ready_producer(self) -> tuple[AIOKafkaProducer, int]:
        producer = self._producer
        if producer is not None and not _broken(producer):
            return producer, self._generation  # the usual case: no lock to take
        async with self._lock:
            producer = self._producer
            if producer is not None and not _broken(producer):
                return producer, self._generation
            if producer is not None:
                self._producer = None
                self._retire(producer)
            fresh = self._factory()
            try:
                await asyncio.wait_for(fresh.start(), self._policy.start_timeout)
            except BaseException:
                self._retire(fresh)
                raise
            self._producer = fresh
            self._generation += 1
            return fresh, self._generation

    def _renew(self, generation: int) -> None:
        """Retire the producer of ``generation`` if it is still the current one."""
        if generation == self._generation and self._producer is not None:
            producer, self._producer = self._producer, None
            self.renewals += 1
            self._retire(producer)

    def _retire(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.create_task(self._close(producer), name="retire-producer")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), self._policy.stop_timeout)
        except Exception as exc:  # a retired producer's trouble is nobody's business
            log.info("retired producer did not close cleanly", extra={"error": repr(exc)})

    # -- publishing ----------------------------------------------------------

    async def publish(
        self, tenant: str, events: Sequence[CloudEvent], *, actor: str | None = None
    ) -> list[Published]:
        """Publish ``events`` of ``tenant`` (all stamped); return one result per event.

        Every event goes out carrying ``actor`` (:mod:`eventfold.actors`): the one
        given, else the current request's; whatever an event said before is
        replaced (:class:`~eventfold.actors.MissingActor` when no actor is known).
        Raises :class:`Unavailable` when Kafka did not acknowledge within the
        deadline; the caller may retry with the same ids without any second effect.
        While tracing is on, the publish is a producer span whose context each event
        carries on (:func:`eventfold.tracing.stamped`, and in its Kafka headers).
        """
        return await self._traced(tenant, with_actor(events, actors.resolve(actor)))

    async def publish_stamped(self, tenant: str, events: Sequence[CloudEvent]) -> list[Published]:
        """Publish events this process built, each already carrying its own actor.

        For a joined publish of several workflow runs (each run its own actor), which
        :meth:`publish` would give one actor. Never for events from a client: their
        actor is what :meth:`publish` replaces. Raises
        :class:`~eventfold.actors.MissingActor` when an event names none.
        """
        if any(not (ev.model_extra or {}).get(actors.ATTRIBUTE) for ev in events):
            raise actors.MissingActor("an event of a joined publish names no actor")
        return await self._traced(tenant, events)

    async def _traced(self, tenant: str, events: Sequence[CloudEvent]) -> list[Published]:
        """:meth:`_sealed`, in a producer span whose context the events carry while
        tracing is on."""
        if not tracing.enabled():
            return await self._sealed(tenant, events)
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": self._topic,
            "messaging.batch.message_count": len(events),
            "eventfold.tenant": tenant,
        }
        with tracing.span(f"publish {self._topic}", kind="producer", attributes=attributes):
            return await self._sealed(tenant, tracing.stamped(events))

    async def _sealed(self, tenant: str, events: Sequence[CloudEvent]) -> list[Published]:
        """:meth:`_publish`, the data of personal records encrypted in what goes out."""
        if self._sealer is None:
            return await self._publish(tenant, events, None)
        return await self._publish(tenant, events, await self._sealer.seal(tenant, events))

    async def _publish(
        self,
        tenant: str,
        events: Sequence[CloudEvent],
        sealed: Sequence[bytes | None] | None,
    ) -> list[Published]:
        """Publish ``events``; ``sealed`` holds the log's bytes of those whose data is
        encrypted (the others are serialised here)."""
        first_of: dict[str, int] = {}
        for i, ev in enumerate(events):
            first_of.setdefault(ev.id, i)
        firsts = sorted(first_of.values())
        known = await self._lookup(tenant, [events[i] for i in firsts])
        fresh_at = [i for i in firsts if events[i].id not in known]
        fresh = [events[i] for i in fresh_at]
        # Serialised once: the log's record and the dedup memory hold the same bytes.
        payloads = [
            (sealed[i] if sealed is not None else None) or events[i].to_json() for i in fresh_at
        ]
        landed = await self._send(tenant, fresh, payloads)
        await self._remember(tenant, fresh, payloads, landed)
        self._metrics.events_duplicate.inc(len(events) - len(fresh))
        results: dict[str, Published] = {**known, **landed}
        out: list[Published] = []
        for i, ev in enumerate(events):
            res = results[ev.id]
            dup = res.duplicate or first_of[ev.id] != i
            out.append(Published(ev.id, res.partition, res.offset, dup))
        return out

    async def _send(
        self, tenant: str, events: Sequence[CloudEvent], payloads: Sequence[bytes]
    ) -> dict[str, Published]:
        if not events:
            return {}
        policy = self._policy
        cid = correlation_id.get()
        headers = [("content-type", b"application/cloudevents+json")]
        if cid:
            headers.append(("x-request-id", cid.encode()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.deadline
        backoff = Backoff(min(policy.backoff, policy.backoff_cap), policy.backoff_cap)
        attempt = 0
        while True:
            attempt += 1
            generation: int | None = None
            try:
                async with asyncio.timeout(min(policy.attempt_timeout, deadline - loop.time())):
                    producer, generation = await self._ready_producer()
                    keys = [message_key(tenant, ev.subject, ev.id) for ev in events]
                    each = (
                        [headers + tracing.kafka_headers(ev) for ev in events]
                        if tracing.enabled()
                        else [headers] * len(events)
                    )
                    records = list(zip(keys, payloads, each, strict=True))
                    if len(events) >= BATCHED_SEND_MIN:
                        positions = await send_batched(producer, self._topic, records)
                    else:
                        futures = [
                            await producer.send(self._topic, value=v, key=k, headers=h)
                            for k, v, h in records
                        ]
                        metas = (
                            [await futures[0]]
                            if len(futures) == 1
                            else await asyncio.gather(*futures)
                        )
                        positions = [(m.partition, m.offset) for m in metas]
                break
            except Exception as exc:
                self._metrics.dependency_errors.labels("kafka").inc()
                unknown = send_outcome_unknown(exc)
                if unknown and generation is not None:
                    self._renew(generation)
                pause = backoff.next()
                left = deadline - loop.time()
                extra = {"error": repr(exc), "tenant": tenant, "attempt": attempt}
                if not unknown or attempt >= policy.max_attempts or left < pause + 0.5:
                    log.warning("publish failed", extra=extra)
                    raise Unavailable(
                        "the event log did not acknowledge the write; "
                        "retry with the same event ids",
                        retry_after=1,
                    ) from None
                log.warning("send not acknowledged, retrying with a new producer", extra=extra)
                await asyncio.sleep(pause)
        for type_, n in Counter(ev.type for ev in events).items():
            self._metrics.events_published.labels(type_).inc(n)
        if self._on_acked is not None:
            self._on_acked(positions)
        return {
            ev.id: Published(ev.id, partition, offset, False)
            for ev, (partition, offset) in zip(events, positions, strict=True)
        }

    # -- the dedup memory (Redis, failing open) -------------------------------

    def _redis_usable(self) -> AutoPipeline | None:
        if self._pipe is None or not self._redis_breaker.allow():
            return None
        return self._pipe

    def _redis_failed(self, exc: BaseException, what: str) -> None:
        self._metrics.dependency_errors.labels("redis").inc()
        self._redis_breaker.failure(exc)
        log.warning(what, extra={"error": repr(exc)})

    async def _lookup(self, tenant: str, events: Sequence[CloudEvent]) -> dict[str, Published]:
        """The events published before (confirmed in Redis), with their positions."""
        pipe = self._redis_usable() if events else None
        if pipe is None:
            return {}
        timeout = self._policy.redis_timeout
        try:
            if len(events) == 1:
                values = [
                    await pipe.execute("GET", dedup_key(tenant, events[0].id), timeout=timeout)
                ]
            else:
                keys = [dedup_key(tenant, ev.id) for ev in events]
                values = await pipe.execute("MGET", *keys, timeout=timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc, "dedup unavailable, publishing without it")
            return {}
        self._redis_breaker.success()
        known: dict[str, Published] = {}
        for ev, raw in zip(events, values, strict=True):
            doc = orjson.loads(raw) if raw else None
            # Only a confirmed entry (with its position) counts; anything else is published.
            if isinstance(doc, dict) and doc.get("o") is not None:
                known[ev.id] = Published(ev.id, doc.get("p"), doc.get("o"), True)
        return known

    async def _remember(
        self,
        tenant: str,
        events: Sequence[CloudEvent],
        payloads: Sequence[bytes],
        landed: dict[str, Published],
    ) -> None:
        pipe = self._redis_usable() if events else None
        if pipe is None:
            return
        timeout = self._policy.redis_timeout
        # Queued together, the SETs go out in one pipeline (with other requests' commands).
        replies: list[asyncio.Future[Any]] = []
        for ev, payload in zip(events, payloads, strict=True):
            res = landed[ev.id]
            assert res.partition is not None  # a confirmed send has its position
            assert res.offset is not None
            record = dedup_record(res.partition, res.offset, payload)
            key = dedup_key(tenant, ev.id)
            replies.append(
                pipe.execute("SET", key, record, "EX", DEDUP_TTL_SECONDS, timeout=timeout)
            )
        try:
            await (replies[0] if len(replies) == 1 else asyncio.gather(*replies))
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc, "dedup record not written")
            return
        self._redis_breaker.success()


def with_actor(events: Sequence[CloudEvent], actor: str) -> Sequence[CloudEvent]:
    """``events``, each carrying ``actor`` (copied only where it differs: the
    gateway's own stamp already set it on the hot path)."""
    return [
        ev
        if (ev.model_extra or {}).get(actors.ATTRIBUTE) == actor
        else ev.model_copy(update={actors.ATTRIBUTE: actor})
        for ev in events
    ]


def dedup_record(partition: int, offset: int, envelope: bytes) -> bytes:
    """The dedup memory's document ``{"p": partition, "o": offset, "e": envelope}``.

    Built around the envelope's bytes as they went to the log, not serialised again.
    """
    return b'{"p":%d,"o":%d,"e":%b}' % (partition, offset, envelope)


def _broken(producer: AIOKafkaProducer) -> bool:
    """Whether the producer closed or its sender task died (sends would never complete)."""
    if getattr(producer, "_closed", False):
        return True
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()
