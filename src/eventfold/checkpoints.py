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


class CheckpointWatcher:
    """Knows how far the projector has committed, and wakes readers waiting for it."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, consumer: str, topic: str) -> None:
        self._dsn = dsn
        self._pool = pool
        self._consumer = consumer
        self._topic = topic
        self.positions: dict[int, int] = {}
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
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

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
            # A notification may have been missed while reconnecting: read once.
            await self._refresh()
            await asyncio.wait_for(asyncio.shield(fut), within)
            return True
        except TimeoutError:
            return self.covers(required)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _advance(self, positions: Mapping[int, int]) -> None:
        for p, o in positions.items():
            if o > self.positions.get(p, 0):
                self.positions[p] = o
        for required, fut in self._waiters:
            if not fut.done() and self.covers(required):
                fut.set_result(None)

    async def _refresh(self) -> None:
        try:
            async with self._pool.acquire(timeout=2) as conn:
                self._advance(await fetch_checkpoints(conn, self._consumer, self._topic))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("checkpoints not readable", extra={"error": repr(exc)})

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        doc = orjson.loads(payload)
        if doc.get("t") == self._topic and doc.get("c") == self._consumer:
            self._advance({int(p): int(o) for p, o in doc["p"].items()})

    async def _listen_forever(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                self._conn = await connect(self._dsn)
                lost = asyncio.Event()
                self._conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await self._conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
                await self._refresh()  # after LISTEN: nothing committed since is missed
                delay = 0.2
                await lost.wait()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("checkpoint listener down, reconnecting", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
