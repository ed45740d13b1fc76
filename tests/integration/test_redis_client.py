"""The shared Redis client under a burst: calls wait for a pooled connection, none fail."""

from __future__ import annotations

import asyncio
import uuid

from eventfold.clients import REDIS_MAX_CONNECTIONS, redis_client
from eventfold.settings import Settings


async def test_a_burst_past_the_pool_size_waits_instead_of_failing(stack: Settings) -> None:
    client = redis_client(stack)
    key = f"ef:test:burst:{uuid.uuid4().hex}"
    try:
        # Each call holds its connection a little, so the burst needs more than the pool.
        async def call() -> None:
            await client.blpop([f"{key}:empty"], timeout=0.02)  # holds a connection 20 ms
            await client.incr(key)

        results = await asyncio.gather(
            *(call() for _ in range(REDIS_MAX_CONNECTIONS * 3)), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert int(await client.get(key) or 0) == REDIS_MAX_CONNECTIONS * 3
    finally:
        await client.delete(key)
        await client.aclose()
