"""Live push, publish side: after a batch commits, its applied events go to Redis pub/sub.

One channel per tenant (:func:`eventfold.livefeed.channel`, whose module says the
format), so any API instance can serve any tenant's ``/stream``. Best effort by
design: the projector's commit is the truth, and a message lost here (Redis
away, a subscriber not yet connected) is recovered by the client resuming with
``Last-Event-ID`` from the event history.

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

from redis.asyncio import Redis

from eventfold.clients import redis_client
from eventfold.livefeed import LiveEvent, channel, payloads
from eventfold.settings import Settings

log = logging.getLogger("eventfold.projector.live")

#: One publish (a Redis pipeline) ends within this; the projector goes on meanwhile.
PUBLISH_DEADLINE = 2.0


class LivePublisher:
    """Publishes each committed batch's applied events to their tenants' channels."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis: Redis | None = None
        self._running: asyncio.Task[None] | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self._settings)
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
