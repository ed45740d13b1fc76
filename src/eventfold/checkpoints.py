"""Read-your-writes: wait until the projector's checkpoints cover a consistency token.

One LISTEN connection per process learns of every committed batch (the
projector NOTIFYs in the batch's transaction); waiting readers are futures
resolved by those notifications, so a wait costs no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

from eventfold.db import CHECKPOINT_CHANNEL, connect, fetch_checkpoints

log = logging.getLogger("eventfold.checkpoints")

#: Connecting, LISTEN and the first read, together.
_CONNECT_TIMEOUT = 10.0
#: A silent LISTEN connection is pinged this often; a stalled server is noticed then.
_KEEPALIVE_SECONDS = 5.0
_PING_TIMEOUT = 2.0
#: Reading the checkpoints table (acquire included).
_READ_TIMEOUT = 2.0


class CheckpointWatcher:
    """Knows how far the projector has committed, and wakes readers waiting for it."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, consumer: str, topic: str) -> None:
        self._dsn = dsn
        self._pool = pool
        self._consumer = consumer
        self._topic = topic
        self.positions: dict[int, int] = {}
        self._redriven: dict[str, asyncio.Event] = {}
        self._waiters: list[tuple[dict[int, int], asyncio.Future[None]]] = []
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Begin listening (in the background, reconnecting when the connection drops)."""
        self._task = asyncio.create_task(self._listen_forever(), name="checkpoint-watcher")

    async def stop(self) -> None:
        """Stop listening and release the connection."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await _close(self._conn)

    def covers(self, required: Mapping[int, int]) -> bool:
        """Whether every ``partition: offset`` in ``required`` is committed."""
        return all(self.positions.get(p, 0) > o for p, o in required.items())

    async def wait_for(self, required: Mapping[int, int], within: float) -> bool:
        """Wait until ``required`` is covered; False when ``within`` seconds run out first."""
        if self.covers(required):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (dict(required), fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(within):
                if not self._listening():
                    # Notifications are not arriving now: read the checkpoints once.
                    # (A listener that reconnects reads them itself after LISTEN, so
                    # while it is up, a read per waiting request would only load the pool.)
                    await self._refresh()
                if not fut.done():
                    await asyncio.shield(fut)
            return True
        except TimeoutError:
            return self.covers(required)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def wait_for_tenant(
        self, tenant: str, required: Mapping[int, int], within: float
    ) -> bool:
        """Like :meth:`wait_for`, and also until ``tenant`` has no deferred event in ``required``.

        A tenant that was too slow to write has its events deferred past the
        checkpoints; a read of that tenant carrying the token waits for their
        background retry too (woken by its notification, rechecked every second).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if not await self.wait_for(required, within):
            return False
        while await self._deferred_within(tenant, required):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            woken = self._redriven.setdefault(tenant, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(remaining, 1.0))
        return True

    async def _deferred_within(self, tenant: str, required: Mapping[int, int]) -> bool:
        async with asyncio.timeout(_READ_TIMEOUT), self._pool.acquire() as conn:
            found: bool = await conn.fetchval(
                """SELECT EXISTS (
                     SELECT 1 FROM eventfold.parked p
                     JOIN unnest($3::integer[], $4::bigint[]) AS t(pa, o)
                       ON p.partition = t.pa AND p."offset" <= t.o
                     WHERE p.consumer = $1 AND p.tenant = $2 AND p.retry)""",
                self._consumer,
                tenant,
                list(required),
                list(required.values()),
            )
        return found

    def _listening(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closed()

    def _advance(self, positions: Mapping[int, int]) -> None:
        for p, o in positions.items():
            if o > self.positions.get(p, 0):
                self.positions[p] = o
        for required, fut in self._waiters:
            if not fut.done() and self.covers(required):
                fut.set_result(None)

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT), self._pool.acquire() as conn:
                self._advance(await fetch_checkpoints(conn, self._consumer, self._topic))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("checkpoints not readable", extra={"error": repr(exc)})

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        doc = orjson.loads(payload)
        if doc.get("redriven") and doc.get("c") == self._consumer:
            woken = self._redriven.pop(str(doc.get("tenant")), None)
            if woken is not None:
                woken.set()
            return
        if doc.get("t") == self._topic and doc.get("c") == self._consumer:
            self._advance({int(p): int(o) for p, o in doc["p"].items()})

    async def _listen_forever(self) -> None:
        delay = 0.2
        while not self._closing:
            conn: asyncpg.Connection | None = None
            try:
                lost = asyncio.Event()
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    conn = self._conn = await connect(self._dsn)
                    conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                    await conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
                    await self._refresh()  # after LISTEN: nothing committed since is missed
                delay = 0.2
                await self._watch(conn, lost)
            except Exception as exc:  # the listener must outlive any failure: it reconnects
                log.warning("checkpoint listener down, reconnecting", extra={"error": repr(exc)})
            await _close(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is lost, or stops answering a ping in time.

        A server that stalls (a network partition) never closes the connection:
        only a ping with a deadline tells.
        """
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), _KEEPALIVE_SECONDS)
                return
            await conn.execute("SELECT 1", timeout=_PING_TIMEOUT)


async def _close(conn: asyncpg.Connection | None) -> None:
    """Close ``conn`` politely if the server answers within a second, else drop it."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=1)
    except Exception:
        conn.terminate()
