"""The checkpoint watcher knows which tenants may have deferred events, so other reads skip a query.

A read with a consistency token waits for the tenant's deferred events too. The
watcher keeps the set of tenants that may have some (read after LISTEN, grown by
the batches' notifications) and trusts it only while nothing can have been
missed. Each step below goes through PostgreSQL: rows in ``eventfold.parked``
and notifications sent by the projector's own statements.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg
import orjson

from eventfold import db, deadletters
from eventfold.checkpoints import CheckpointWatcher
from eventfold.db import CHECKPOINT_CHANNEL
from eventfold.deadletters import DeadLetter
from eventfold.settings import Settings


async def until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait until ``condition()`` holds (the watcher's state moves on its own tasks)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.01)


def deferral(tenant: str, partition: int, offset: int) -> DeadLetter:
    return DeadLetter(partition=partition, offset=offset, tenant=tenant, key="orders/a",
                       raw=b"{}", error="deferred: test", deferred=True)  # fmt: skip


async def batch(
    pool: asyncpg.Pool,
    consumer: str,
    topic: str,
    positions: dict[int, int],
    parked: list[DeadLetter],
    deferred: set[str],
) -> None:
    """What a projector batch commits: checkpoints, dead letters, one notification."""
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_checkpoints(conn, consumer, topic, list(positions))
        await deadletters.put(conn, consumer, parked)
        await db.save_checkpoints(conn, consumer, topic, positions, deferred=deferred)


async def test_deferred_tenants_are_known_from_the_listener(
    stack: Settings, pool: asyncpg.Pool
) -> None:
    run = uuid.uuid4().hex[:8]
    consumer, topic = f"test.watch.{run}", f"test.watch.{run}"
    early, late, other = f"early{run}", f"late{run}", f"other{run}"
    # Deferred before the watcher starts: found by its read after LISTEN.
    await batch(pool, consumer, topic, {0: 4}, [deferral(early, 0, 3)], {early})

    watcher = CheckpointWatcher(stack.database_url, pool, consumer=consumer, topic=topic)
    assert watcher.may_have_deferred(other)  # not listening yet: every read looks up
    await watcher.start()
    try:
        await until(lambda: not watcher.may_have_deferred(other), "the set is trusted")
        assert watcher.may_have_deferred(early)
        # Looked up: a token before the deferred event does not wait; one after it does.
        assert not await watcher.wait_for_tenant(early, {0: 3}, 0.2)
        assert await watcher.wait_for_tenant(early, {0: 2}, 0.2)
        assert await watcher.wait_for_tenant(other, {0: 3}, 0.2)
        assert watcher.may_have_deferred(early)  # it still has a deferred event

        # A batch defers another tenant: its notification names it.
        await batch(pool, consumer, topic, {1: 8}, [deferral(late, 1, 7)], {late})
        assert await watcher.wait_for({1: 7}, 5)
        assert watcher.may_have_deferred(late)
        assert not await watcher.wait_for_tenant(late, {1: 7}, 0.2)

        # The retry applied the early tenant's events: the next lookup drops it.
        async with pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM eventfold.parked WHERE consumer = $1 AND tenant = $2", consumer, early
            )
        assert await watcher.wait_for_tenant(early, {0: 3}, 1)
        assert not watcher.may_have_deferred(early)
        assert watcher.may_have_deferred(late)

        # Too many deferred tenants to name in one notification: "*", every read looks up
        # until the set is read again.
        crowd = {f"crowd{run}{n:03d}{'x' * 30}" for n in range(200)}
        first = min(crowd)
        await batch(pool, consumer, topic, {2: 1}, [deferral(first, 2, 0)], crowd)
        assert await watcher.wait_for({2: 0}, 5)
        # (Not asserted: the untrusted moment in between, which the reload may end at once.)
        await until(lambda: not watcher.may_have_deferred(other), "trusted again after '*'")
        assert watcher.may_have_deferred(first)  # read again: the one with a parked row

        # A projector that does not name deferred tenants (an older version) is not trusted:
        # the tenant it deferred without saying so is found by reading the set again.
        hidden = f"hidden{run}"
        async with pool.acquire() as conn, conn.transaction():
            await deadletters.put(conn, consumer, [deferral(hidden, 3, 0)])
        assert not watcher.may_have_deferred(hidden)
        payload = orjson.dumps({"t": topic, "c": consumer, "p": {"3": 1}}).decode()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", CHECKPOINT_CHANNEL, payload)
        assert await watcher.wait_for({3: 0}, 5)
        await until(lambda: watcher.may_have_deferred(hidden), "the unnamed tenant found")
        await until(lambda: not watcher.may_have_deferred(other), "trusted again")
    finally:
        await watcher.stop()
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM eventfold.parked WHERE consumer = $1", consumer)
            await conn.execute("DELETE FROM eventfold.checkpoints WHERE consumer = $1", consumer)
