"""The gateway's memory of published event ids (Redis), shared by ingest and reads.

Each entry holds the event's log position and envelope for a bounded time, so
a retried publish can answer ``duplicate: true`` and a read can show an event
that is published but not projected yet as ``pending``.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

#: How long the gateway remembers a published event id.
DEDUP_TTL_SECONDS = 24 * 3600


def dedup_key(tenant: str, event_id: str) -> str:
    """Redis key remembering that ``event_id`` of ``tenant`` was published."""
    return f"ef:{tenant}:ev:{event_id}"


async def pending_event(redis: Redis | None, tenant: str, event_id: str) -> dict[str, Any] | None:
    """The envelope of an event the gateway published, if it still remembers it."""
    if redis is None:
        return None
    try:
        raw = await redis.get(dedup_key(tenant, event_id))
    except (RedisError, OSError, TimeoutError):
        return None
    if not raw:
        return None
    envelope = orjson.loads(raw).get("e")
    return envelope if isinstance(envelope, dict) else None
