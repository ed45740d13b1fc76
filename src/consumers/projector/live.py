"""Live push, publish side: after a batch commits, its applied events go to Redis pub/sub.

One channel per tenant (:func:`channel`), so any API instance can serve any
tenant's ``/stream``. Best effort by design: the projector's commit is the
truth, and a message lost here (Redis away, a subscriber not yet connected) is
recovered by the client resuming with ``Last-Event-ID`` from the event history.

The batch hands over what it wrote (each event's ``seq`` comes back from the
history insert), so publishing costs no database round trip; it runs in the
background while the projector folds the next batch, one publish at a time so
the streams keep the log's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from eventfold.settings import Settings

log = logging.getLogger("eventfold.projector.live")

#: One publish (a Redis pipeline) ends within this; the projector goes on meanwhile.
PUBLISH_DEADLINE = 2.0


def channel(tenant: str) -> str:
    """The Redis pub/sub channel carrying ``tenant``'s applied events."""
    return f"ef:{tenant}:stream"


def history_item(row: asyncpg.Record) -> dict[str, Any]:
    """A history row as clients see it: the envelope plus ``status`` (and ``reason``)."""
    envelope = row["envelope"]
    item: dict[str, Any] = dict(orjson.loads(envelope) if isinstance(envelope, str) else envelope)
    item["status"] = row["status"]
    if row["reason"] is not None:
        item["reason"] = row["reason"]
    return item


def message(seq: int, item: dict[str, Any]) -> bytes:
    """The pub/sub payload: the history ``seq`` (the SSE id), the type, and the SSE data."""
    return orjson.dumps({"seq": seq, "type": item.get("type"), "data": orjson.dumps(item).decode()})


#: Events per pub/sub message: bounded so a message stays far below the output
#: buffer limits Redis sets for pub/sub clients.
MESSAGE_EVENTS = 200


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An applied event as the batch wrote it to the tenant's history."""

    tenant: str
    seq: int
    type: str
    #: The envelope as JSON text, as stored in the history.
    envelope: str
    #: Whether the envelope has a ``status`` extension attribute of its own.
    has_status: bool = False


def live_message(event: LiveEvent) -> bytes:
    """:func:`message` of an applied event, spliced from its envelope text.

    The SSE data is the envelope plus ``"status": "applied"``: appending the
    member to the JSON text saves parsing and re-serialising every envelope.
    An envelope with a ``status`` extension of its own goes the long way (the
    history's status wins, as on replay).
    """
    text = event.envelope.rstrip()
    if text.endswith("}") and not event.has_status:
        body = text[:-1].rstrip()
        data = body + (',"status":"applied"}' if body != "{" else '"status":"applied"}')
        return orjson.dumps({"seq": event.seq, "type": event.type, "data": data})
    item = dict(orjson.loads(text))
    item["status"] = "applied"
    return message(event.seq, item)


def payloads(events: Sequence[LiveEvent]) -> list[tuple[str, bytes]]:
    """``(tenant, message)`` pairs: a JSON array of :func:`live_message` items per message.

    One message per tenant per batch (per :data:`MESSAGE_EVENTS`) instead of one
    per event: the Redis commands, not the bytes, were the publish's cost.
    Events keep their order within each tenant, the only order a stream sees.
    """
    by_tenant: dict[str, list[bytes]] = {}
    for event in events:
        by_tenant.setdefault(event.tenant, []).append(live_message(event))
    return [
        (tenant, b"[" + b",".join(items[i : i + MESSAGE_EVENTS]) + b"]")
        for tenant, items in by_tenant.items()
        for i in range(0, len(items), MESSAGE_EVENTS)
    ]


class LivePublisher:
    """Publishes each committed batch's applied events to their tenants' channels."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis: Redis | None = None
        self._running: asyncio.Task[None] | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(
                self._settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        return self._redis

    async def submit(self, events: Sequence[LiveEvent]) -> None:
        """Publish ``events`` in the background, after the previous publish ended.

        Waiting for the previous one keeps the order on every channel and at
        most one publish in flight (no queue grows behind a slow Redis).
        """
        await self.wait()
        if events:
            self._running = asyncio.create_task(self.publish(events), name="projector-live")

    async def wait(self) -> None:
        """Wait for the publish in flight, if any."""
        running, self._running = self._running, None
        if running is not None:
            await running

    async def publish(self, events: Sequence[LiveEvent]) -> None:
        """Publish ``events`` now; never raises (logged instead)."""
        if not events:
            return
        try:
            async with asyncio.timeout(PUBLISH_DEADLINE):
                async with self._client().pipeline(transaction=False) as pipe:
                    for tenant, payload in payloads(events):
                        pipe.publish(channel(tenant), payload)
                    await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Subscribers resume from the history: a missed publish costs latency only.
            log.info("live events not published", extra={"error": repr(exc)})

    async def close(self) -> None:
        """Finish the publish in flight (bounded by its deadline) and close the Redis client."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.wait()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
