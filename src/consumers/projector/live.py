"""Live push, publish side: after a batch commits, its applied events go to Redis pub/sub.

One channel per tenant (:func:`channel`), so any API instance can serve any
tenant's ``/stream``. Best effort by design: the projector's commit is the
truth, and a message lost here (Redis away, a subscriber not yet connected) is
recovered by the client resuming with ``Last-Event-ID`` from the event history.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from consumers.projector.batch import LogEvent
from eventfold.ids import tenant_schema
from eventfold.replay import is_replay
from eventfold.settings import Settings

log = logging.getLogger("eventfold.projector.live")

#: The whole publish (history read + Redis) ends within this; the projector goes on after it.
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


class LivePublisher:
    """Publishes each committed batch's applied events to their tenants' channels."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._redis: Redis | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(
                self._settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        return self._redis

    async def publish(self, events: Sequence[LogEvent]) -> None:
        """Publish the applied events among ``events``; never raises (logged instead)."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for item in events:
            ev = item.event
            # A replay re-applies old facts: it rebuilds projections, it never pushes live.
            if ev is not None and ev.tenant and not is_replay(ev):
                by_tenant[ev.tenant].append(ev.id)
        if not by_tenant:
            return
        try:
            async with asyncio.timeout(PUBLISH_DEADLINE):
                await self._publish(by_tenant)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Subscribers resume from the history: a missed publish costs latency only.
            log.info("live events not published", extra={"error": repr(exc)})

    async def _publish(self, by_tenant: dict[str, list[str]]) -> None:
        rows: dict[str, list[asyncpg.Record]] = {}
        async with self._pool.acquire(timeout=1.0) as conn:
            for tenant, event_ids in by_tenant.items():
                # The seq (the SSE id) is assigned at commit: read it back, one query a tenant.
                try:
                    rows[tenant] = await conn.fetch(
                        f"SELECT seq, envelope, status, reason FROM {tenant_schema(tenant)}.events"
                        " WHERE id = ANY($1::text[]) AND status = 'applied' ORDER BY seq",
                        event_ids,
                    )
                except asyncpg.UndefinedTableError:
                    continue  # events of a tenant that was never created: nothing applied
        async with self._client().pipeline(transaction=False) as pipe:
            for tenant, found in rows.items():
                for row in found:
                    pipe.publish(channel(tenant), message(row["seq"], history_item(row)))
            await pipe.execute()

    async def close(self) -> None:
        """Close the Redis client, if one was opened."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
