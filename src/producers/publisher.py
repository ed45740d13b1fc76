"""Publishing events to the log: idempotent, acks=all, keyed by tenant + subject.

The gateway remembers every event id it published (in Redis, for a bounded
time), so a retried publish answers ``duplicate: true`` with the original
position instead of writing again. Redis is an optimisation here, not the
guarantee: when it is down the event is published and the projector's
dedup by event id keeps the effect single.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from eventfold.dedup import DEDUP_TTL_SECONDS, dedup_key
from eventfold.envelope import CloudEvent
from eventfold.errors import Unavailable
from eventfold.kafka import message_key
from eventfold.logs import correlation_id
from eventfold.metrics import Metrics

log = logging.getLogger("eventfold.publisher")

#: A reservation not confirmed within this time belongs to a publisher that died.
_RESERVATION_TTL_SECONDS = 60
_PENDING = b"{}"


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


class Publisher:
    """Sends stamped envelopes to the events topic and reports their positions."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        redis: Redis | None,
        metrics: Metrics,
        *,
        topic: str,
        send_timeout: float = 20.0,
    ) -> None:
        self._producer = producer
        self._redis = redis
        self._metrics = metrics
        self._topic = topic
        self._send_timeout = send_timeout

    async def publish(self, tenant: str, events: Sequence[CloudEvent]) -> list[Published]:
        """Publish ``events`` of ``tenant`` (all stamped); return one result per event.

        Raises :class:`Unavailable` when Kafka did not acknowledge; the caller
        may retry with the same ids without any second effect.
        """
        first_of: dict[str, int] = {}
        for i, ev in enumerate(events):
            first_of.setdefault(ev.id, i)
        unique = [events[i] for i in sorted(first_of.values())]
        known = await self._reserve(tenant, unique)
        fresh = [ev for ev in unique if ev.id not in known]
        landed = await self._send(tenant, fresh)
        await self._remember(tenant, fresh, landed)
        self._metrics.events_duplicate.inc(len(events) - len(fresh))
        results: dict[str, Published] = {**known, **landed}
        out: list[Published] = []
        for i, ev in enumerate(events):
            res = results[ev.id]
            dup = res.duplicate or first_of[ev.id] != i
            out.append(Published(ev.id, res.partition, res.offset, dup))
        return out

    async def _reserve(self, tenant: str, events: Sequence[CloudEvent]) -> dict[str, Published]:
        """Claim each id (SET NX); return those already published, with their positions."""
        if self._redis is None or not events:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for ev in events:
                    pipe.set(
                        dedup_key(tenant, ev.id), _PENDING, nx=True, ex=_RESERVATION_TTL_SECONDS
                    )
                claimed = await pipe.execute()
            taken = [ev.id for ev, ok in zip(events, claimed, strict=True) if not ok]
            if not taken:
                return {}
            values = await self._redis.mget([dedup_key(tenant, i) for i in taken])
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.dependency_errors.labels("redis").inc()
            log.warning("dedup unavailable, publishing without it", extra={"error": repr(exc)})
            return {}
        known: dict[str, Published] = {}
        for event_id, raw in zip(taken, values, strict=True):
            doc = orjson.loads(raw) if raw else {}
            known[event_id] = Published(event_id, doc.get("p"), doc.get("o"), True)
        return known

    async def _send(self, tenant: str, events: Sequence[CloudEvent]) -> dict[str, Published]:
        if not events:
            return {}
        cid = correlation_id.get()
        headers = [("content-type", b"application/cloudevents+json")]
        if cid:
            headers.append(("x-request-id", cid.encode()))
        try:
            futures = [
                await self._producer.send(
                    self._topic,
                    value=ev.to_json(),
                    key=message_key(tenant, ev.subject, ev.id),
                    headers=headers,
                )
                for ev in events
            ]
            metas = await asyncio.wait_for(asyncio.gather(*futures), self._send_timeout)
        except (KafkaError, TimeoutError) as exc:
            self._metrics.dependency_errors.labels("kafka").inc()
            await self._release(tenant, events)
            log.warning("publish failed", extra={"error": repr(exc), "tenant": tenant})
            raise Unavailable(
                "the event log did not acknowledge the write; retry with the same event ids",
                retry_after=1,
            ) from None
        for ev in events:
            self._metrics.events_published.labels(ev.type).inc()
        return {
            ev.id: Published(ev.id, meta.partition, meta.offset, False)
            for ev, meta in zip(events, metas, strict=True)
        }

    async def _remember(
        self, tenant: str, events: Sequence[CloudEvent], landed: dict[str, Published]
    ) -> None:
        if self._redis is None or not events:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for ev in events:
                    res = landed[ev.id]
                    doc = {"p": res.partition, "o": res.offset, "e": ev.to_dict()}
                    pipe.set(dedup_key(tenant, ev.id), orjson.dumps(doc), ex=DEDUP_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.dependency_errors.labels("redis").inc()
            log.warning("dedup record not written", extra={"error": repr(exc)})

    async def _release(self, tenant: str, events: Sequence[CloudEvent]) -> None:
        # Whether Kafka kept them is unknown: dropping the claim lets a retry
        # publish again, and the projector's dedup by id absorbs a double.
        if self._redis is None:
            return
        try:
            await self._redis.delete(*[dedup_key(tenant, ev.id) for ev in events])
        except (RedisError, OSError, TimeoutError):
            self._metrics.dependency_errors.labels("redis").inc()
