"""Automatic pipelining of Redis commands (eventfold.redispipe) on the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from eventfold import ratelimit
from eventfold.clients import redis_client
from eventfold.metrics import Metrics
from eventfold.ratelimit import Limits, RateLimiter
from eventfold.redispipe import AutoPipeline
from eventfold.settings import Settings
from tests.faultproxy import FaultProxy
from tests.integration.test_faults import host_port, with_port

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def redis(stack: Settings) -> AsyncIterator[Redis]:
    client = redis_client(stack)
    try:
        yield client
    finally:
        await client.aclose()


class CountingPipeline(AutoPipeline):
    """Counts round trips and the commands each carried."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.batches: list[int] = []

    async def _round_trip(self, commands: list[Any]) -> list[Any]:
        self.batches.append(len(commands))
        return await super()._round_trip(commands)


async def test_one_passes_commands_share_one_round_trip_in_order(redis: Redis) -> None:
    pipe = CountingPipeline(redis)
    key = f"ef:test:pipe:{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(
            *(pipe.execute("INCR", key, timeout=1) for _ in range(50)),
            pipe.execute("GET", key, timeout=1),
        )
        assert replies[:50] == list(range(1, 51))
        assert replies[50] == b"50"
        assert pipe.batches == [51]
        # A lone command is sent at once, not held for company.
        assert await pipe.execute("GET", key, timeout=1) == b"50"
        assert pipe.batches == [51, 1]
    finally:
        await redis.delete(key)


async def test_an_error_reply_fails_only_its_own_command(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    key = f"ef:test:pipe:{uuid.uuid4().hex}"
    try:
        await redis.set(key, b"not a number")
        results = await asyncio.gather(
            pipe.execute("GET", key, timeout=1),
            pipe.execute("INCR", key, timeout=1),
            pipe.execute("STRLEN", key, timeout=1),
            return_exceptions=True,
        )
        assert results[0] == b"not a number"
        assert isinstance(results[1], ResponseError)
        assert results[2] == len(b"not a number")
    finally:
        await redis.delete(key)


async def test_a_batch_past_its_deadline_times_out_and_the_connection_is_not_reused_half_read(
    redis: Redis,
) -> None:
    pipe = AutoPipeline(redis)
    key = f"ef:test:pipe:{uuid.uuid4().hex}"
    try:
        # BLPOP blocks 1 s on the server: the batch's deadline (the earliest) cuts it off.
        slow = pipe.execute("BLPOP", f"{key}:empty", 1, timeout=0.1)
        later = pipe.execute("SET", key, b"v", timeout=5)
        with pytest.raises(TimeoutError):
            await slow
        with pytest.raises(TimeoutError):
            await later
        # The BLPOP's late reply is never read as the answer of a later command.
        await asyncio.sleep(1.1)
        for _ in range(5):
            assert await pipe.execute("ECHO", b"fresh", timeout=1) == b"fresh"
    finally:
        await redis.delete(key)


async def test_a_connection_failure_fails_every_command_of_the_batch(stack: Settings) -> None:
    proxy = await FaultProxy(*host_port(stack.redis_url, 6379)).start()
    client = redis_client(
        dataclasses.replace(stack, redis_url=with_port(stack.redis_url, proxy.host, proxy.port))
    )
    pipe = AutoPipeline(client)
    try:
        assert await pipe.execute("PING", timeout=1) == b"PONG"  # replies as Redis sends them
        await proxy.close()
        results = await asyncio.gather(
            *(pipe.execute("PING", timeout=2) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError | OSError | TimeoutError) for r in results)
        await proxy.heal()
        assert await pipe.execute("ECHO", b"back", timeout=2) == b"back"
    finally:
        await client.aclose()
        await proxy.stop()


async def test_shared_is_one_pipeline_per_client(redis: Redis, stack: Settings) -> None:
    assert AutoPipeline.shared(redis) is AutoPipeline.shared(redis)
    other = redis_client(stack)
    try:
        assert AutoPipeline.shared(other) is not AutoPipeline.shared(redis)
    finally:
        await other.aclose()


async def test_the_rate_limit_script_is_sent_whole_when_redis_lacks_it(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hash Redis has never seen stands for a script cache emptied by a restart.
    monkeypatch.setattr(ratelimit, "_BUCKET_SHA", uuid.uuid4().hex + "00000000")
    limiter = RateLimiter(redis, Metrics(), Limits(1000.0, 2))
    tenant = f"t{uuid.uuid4().hex[:12]}"
    try:
        limits = {"requests_per_second": 0.001, "burst": 2}
        decisions = [await limiter.check(tenant, limits) for _ in range(3)]
        assert [d.allowed if d is not None else None for d in decisions] == [True, True, False]
        assert decisions[0] is not None
        assert int(decisions[0].tokens) == 1
    finally:
        await redis.delete(ratelimit.bucket_key(tenant))
