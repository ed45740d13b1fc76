"""Read-your-writes: wait until the projector's checkpoints cover a consistency token.

One LISTEN connection per process learns of every committed batch (the
projector NOTIFYs in the batch's transaction); waiting readers are futures
resolved by those notifications, so a wait costs no polling.

A tenant too slow to write has events *deferred* past the checkpoints, and a
read of it with a token waits for their retry too. Deferrals are rare, so the
watcher keeps the set of tenants that may have some: read once after LISTEN,
then grown by the batches' notifications (each names the tenants it deferred).
A tenant outside that set needs no query; one inside is looked up, and dropped
from the set once a lookup finds nothing deferred and no notification came in
meanwhile. Whenever the set cannot be trusted (listener down, a batch that
could not list its tenants, a projector that does not list them), every read
looks up as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

from eventfold import deadletters
from eventfold.backoff import Backoff
from eventfold.db import CHECKPOINT_CHANNEL, TENANT_CHANGED, connect, fetch_checkpoints

log = logging.getLogger("eventfold.checkpoints")

#: Connecting, LISTEN and the first read, together.
_CONNECT_TIMEOUT = 10.0
#: A silent LISTEN connection is pinged this often; a stalled server is noticed then.
_KEEPALIVE_SECONDS = 5.0
_PING_TIMEOUT = 2.0
#: Reading the checkpoints table (acquire included).
_READ_TIMEOUT = 2.0
#: Between two loads of the deferred tenants that did not make the set trusted.
_RELOAD_PAUSE = 1.0


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
        #: Tenants that may have deferred events; complete while ``_deferrals_known``.
        self._maybe_deferred: set[str] = set()
        self._deferrals_known = False
        #: Moves whenever the set above grows or stops being trusted: a lookup that
        #: saw nothing deferred drops its tenant only if this did not move meanwhile.
        self._epoch = 0
        #: Moves whenever the set stops being trusted: a load of it that this
        #: outlasted may miss a tenant, so it does not make the set trusted.
        self._distrusts = 0
        self._reload: asyncio.Task[None] | None = None
        #: Called with a tenant whose row changed, or None when such news may have
        #: been missed (the listener was down): the tenant directory's ``forget``.
        self.on_tenant_changed: Callable[[str | None], None] | None = None

    async def start(self) -> None:
        """Begin listening (in the background, reconnecting when the connection drops)."""
        self._task = asyncio.create_task(self._listen_forever(), name="checkpoint-watcher")

    async def stop(self) -> None:
        """Stop listening and release the connection."""
        self._closing = True
        for task in (self._task, self._reload):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
        while await self._has_deferred(tenant, required):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            woken = self._redriven.setdefault(tenant, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(remaining, 1.0))
        return True

    def may_have_deferred(self, tenant: str) -> bool:
        """False only when ``tenant`` is known to have no deferred events (no query needed)."""
        known = self._deferrals_known and self._listening()
        return not known or tenant in self._maybe_deferred

    async def _has_deferred(self, tenant: str, required: Mapping[int, int]) -> bool:
        """Whether ``tenant`` has events deferred at or before ``required``."""
        if not self.may_have_deferred(tenant):
            return False
        epoch = self._epoch
        async with asyncio.timeout(_READ_TIMEOUT), self._pool.acquire() as conn:
            within, anything = await deadletters.deferred_within(
                conn, self._consumer, tenant, required
            )
        # A deferral committed after this query's snapshot is notified after it was
        # sent, so it has moved the epoch (or comes after the discard and adds back).
        if not anything and epoch == self._epoch:
            self._maybe_deferred.discard(tenant)
        return within

    async def _load_deferred(self) -> None:
        """Add every tenant with deferred events to the set; trust it if nothing distrusted it."""
        distrusts = self._distrusts
        async with asyncio.timeout(_READ_TIMEOUT), self._pool.acquire() as conn:
            found = await deadletters.deferred_tenants(conn, self._consumer)
        self._maybe_deferred.update(found)
        # Deferrals committed after the read are notified: the listener adds them.
        if distrusts == self._distrusts:
            self._deferrals_known = True

    def _distrust(self, *, reload: bool = True) -> None:
        """The set may miss tenants: look up every read until a (re)load completes it."""
        self._deferrals_known = False
        self._epoch += 1
        self._distrusts += 1
        if reload and self._listening() and (self._reload is None or self._reload.done()):
            self._reload = asyncio.create_task(self._reload_deferred(), name="deferred-reload")

    async def _reload_deferred(self) -> None:
        """Load the set again until it is trusted (or the listener is down: it loads on LISTEN)."""
        while self._listening() and not self._deferrals_known:
            try:
                await self._load_deferred()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("deferred tenants not readable", extra={"error": repr(exc)})
            if not self._deferrals_known:
                await asyncio.sleep(_RELOAD_PAUSE)

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
        changed = doc.get(TENANT_CHANGED)
        if changed is not None:
            if self.on_tenant_changed is not None:
                self.on_tenant_changed(str(changed))
            return
        if doc.get("redriven") and doc.get("c") == self._consumer:
            woken = self._redriven.pop(str(doc.get("tenant")), None)
            if woken is not None:
                woken.set()
            return
        if doc.get("t") == self._topic and doc.get("c") == self._consumer:
            deferred = doc.get("d")
            if not isinstance(deferred, list):  # "*" (too many to list), or an older projector
                self._distrust()
            elif deferred:
                self._maybe_deferred.update(map(str, deferred))
                self._epoch += 1
            self._advance({int(p): int(o) for p, o in doc["p"].items()})

    async def _listen_forever(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while not self._closing:
            conn: asyncpg.Connection | None = None
            try:
                lost = asyncio.Event()
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    conn = self._conn = await connect(self._dsn)
                    conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                    await conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
                    await self._refresh()  # after LISTEN: nothing committed since is missed
                    await self._load_deferred()
                backoff.reset()
                await self._watch(conn, lost)
            except Exception as exc:  # the listener must outlive any failure: it reconnects
                log.warning("checkpoint listener down, reconnecting", extra={"error": repr(exc)})
            # Notifications may be missed from here until the next LISTEN, which loads.
            self._distrust(reload=False)
            if self.on_tenant_changed is not None:
                self.on_tenant_changed(None)
            await _close(conn)
            await backoff.sleep()

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
