"""Open streams per tenant, counted across every API instance in Redis.

A stream takes a slot when it opens and gives it back when it ends; with
``stream_max_per_tenant`` slots taken, a new stream of that tenant is refused
(429), whichever instance it reaches. The slots are members of one sorted set
per tenant (``ef:{tenant}:streams``) scored by their lease's end on Redis's own
clock; each stream renews its lease every :data:`RENEW_SECONDS`, so the slots of
a process that died free themselves within :data:`LEASE_SECONDS`, with nobody
cleaning up. Taking a slot (prune the expired, count, add) is one script, so two
instances never both take the last slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from eventfold.errors import TooManyRequests

#: How long a slot outlives its last renewal (a dead process's streams free theirs).
LEASE_SECONDS = 30.0
#: How often an open stream renews its slot.
RENEW_SECONDS = 10.0
#: ``Retry-After`` of a refused stream.
RETRY_AFTER_SECONDS = 5
#: Deadline of one Redis call here.
_CALL_SECONDS = 2.0

#: KEYS[1] the tenant's slots; ARGV limit, lease (ms), slot id. 1 taken, 0 refused.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
#: KEYS[1] the tenant's slots; ARGV lease (ms), slot id.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def slots_key(tenant: str) -> str:
    """The Redis key of ``tenant``'s stream slots (the tenant prefix, as every key)."""
    return f"ef:{tenant}:streams"


@dataclass(frozen=True, slots=True)
class StreamSlot:
    """One open stream's slot (``limit`` 0: streams are not counted, nothing to do)."""

    redis: Redis
    tenant: str
    id: str
    counted: bool

    async def renew(self) -> None:
        """Extend the lease (a failure is harmless until the lease runs out)."""
        if self.counted:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.redis.eval(
                        _RENEW, 1, slots_key(self.tenant), int(LEASE_SECONDS * 1000), self.id
                    ),
                    _CALL_SECONDS,
                )

    async def release(self) -> None:
        """Give the slot back (failing that, its lease runs out)."""
        if self.counted:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.redis.zrem(slots_key(self.tenant), self.id), _CALL_SECONDS
                )


async def take_slot(redis: Redis, tenant: str, limit: int) -> StreamSlot:
    """A slot for a new stream of ``tenant``; 429 when ``limit`` streams are open.

    Redis errors propagate: without Redis there is no live feed to stream either.
    """
    slot = StreamSlot(redis, tenant, uuid.uuid4().hex, counted=limit > 0)
    if not slot.counted:
        return slot
    taken = await asyncio.wait_for(
        redis.eval(_TAKE, 1, slots_key(tenant), limit, int(LEASE_SECONDS * 1000), slot.id),
        _CALL_SECONDS,
    )
    if not taken:
        raise TooManyRequests(
            f"tenant {tenant} has {limit} streams open, the most it may",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return slot
