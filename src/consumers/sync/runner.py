"""The sync runner: runs each due integration's connector, one run at a time.

Every ``sync_tick_seconds`` the runner claims due integrations of its own
events topic (never paused, never deleted; due by schedule, by backoff, or
by ``POST …/sync``) with a lease in ``eventfold.integrations``
(``lease_owner``/``lease_until``, taken with ``FOR UPDATE SKIP LOCKED``):
one run per integration at a time across all workers, and a crashed
worker's lease expires (it is renewed with every page). Every later write of the
run is fenced by ``lease_owner``.

A run follows the connector's pages. Each page's items become ``record.*``
events with deterministic ids (:mod:`eventfold.syncpages`), published with
acks=all; only then is the page's cursor stored. A crash repeats at most one
page (same ids: no second effect) and loses none.

Failures: 429 waits ``Retry-After``; 5xx, timeouts and broken pages back off
exponentially with jitter (``backing_off``); ``sync_circuit_failures`` in a
row open the circuit (``circuit_open``) for ``sync_circuit_seconds``, after
which one run is tried (half-open) and closes it on success; 401/403 pause
the integration with ``last_error``.

Reconciliation: when ``reconcile_seconds`` is set, a run that is due for it
starts from the first page (a full pass); with ``reconcile_deletes`` the
records of the collection the pass did not see are deleted.

The runner consumes no events, so replayed events (:mod:`eventfold.replay`)
never cause a call to a third party. Headers are opened from their sealed
form only here, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from consumers.runtime.kafka import start_publisher
from consumers.sync.connectors import (
    CONNECTORS,
    SourceContext,
    SourceError,
    SourceRateLimited,
    SourceRefusedCredentials,
)
from eventfold import actors, tracing
from eventfold.backoff import retry_delay
from eventfold.datakeys import Sealer
from eventfold.egress import AllowList, guarded_session
from eventfold.events.integration import PollConfig, headers_purpose
from eventfold.metrics import Metrics
from eventfold.publisher import Publisher
from eventfold.sealing import SealError, keyring
from eventfold.settings import Settings
from eventfold.syncpages import (
    DELETED,
    BadPage,
    ItemStates,
    PageSpec,
    item_ids,
    load_states,
    page_changes,
    record_event,
    store_states,
)
from eventfold.tenancy import TenantDirectory

log = logging.getLogger("eventfold.sync")

_CLAIM = """
UPDATE eventfold.integrations SET
    lease_owner = $1,
    lease_until = now() + make_interval(secs => $2),
    sync_requested = false
WHERE id IN (
    SELECT id FROM eventfold.integrations
    WHERE deleted_at IS NULL AND NOT paused AND topic = $4
      -- A suspended tenant's syncs wait until it is resumed; a moving one's until it
      -- is on its new server (eventfold.tenantmove).
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = integrations.tenant AND s.status <> 'active')
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenant_homes h
                      WHERE h.tenant = integrations.tenant AND h.state <> 'live')
      AND (lease_until IS NULL OR lease_until < now())
      AND (sync_requested OR next_run_at IS NULL OR next_run_at <= now())
    ORDER BY next_run_at NULLS FIRST
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING id, tenant, kind, config, headers_sealed, cursor, failures, reconcile_at
"""


class LeaseLost(Exception):
    """Another worker holds the integration now (this one overran its lease)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """An integration claimed for one run."""

    id: str
    tenant: str
    kind: str
    config: PollConfig
    headers_sealed: str | None
    cursor: str | None
    failures: int
    reconcile_due: bool


def _poll_attributes(it: Claimed) -> dict[str, Any] | None:
    """The integration poll span's attributes (None, and nothing built, when tracing is off)."""
    if not tracing.enabled():
        return None
    return {
        "eventfold.tenant": it.tenant,
        "eventfold.integration.id": it.id,
        "eventfold.integration.kind": it.kind,
        "eventfold.integration.full_pass": it.reconcile_due,
    }


class SyncRunner:
    """The ``sync`` processor: schedules and runs integration syncs."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        s = settings
        #: The lease covers one page (a request and a publish) and is renewed with
        #: every stored cursor; a late store of a worker whose lease was taken over
        #: is refused (fenced by ``lease_owner``), and its events are harmless.
        self.lease_seconds = max(s.sync_lease_seconds, s.sync_request_timeout + 5.0)
        self._running: set[asyncio.Task[None]] = set()
        self._ready = False

    def _sealer(self) -> Sealer:
        """Encrypts what this processor writes into personal collections."""
        return Sealer(self.pool, TenantDirectory(self.pool), keyring(self.settings))

    def is_ready(self) -> bool:
        """Whether the runner claims integrations: its publisher to Kafka started and its
        last look for due integrations (the first one included) answered."""
        return self._ready

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Claim and run due integrations until ``stop`` (or once, in ``burst`` mode)."""
        stop = stop or asyncio.Event()
        publisher = await start_publisher(
            self.settings, self.metrics, stop, client_id="eventfold-sync", sealer=self._sealer()
        )
        allow = AllowList.parse(self.settings.webhook_allow_hosts)
        session = guarded_session(allow, limit=self.settings.sync_concurrency * 2)
        try:
            while not stop.is_set():
                free = self.settings.sync_concurrency - len(self._running)
                claimed = await self._claim(free) if free > 0 else []
                for item in claimed:
                    task = asyncio.create_task(self._run_one(item, publisher, session, allow))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                if burst:
                    if self._running:
                        await asyncio.wait(set(self._running))
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.sync_tick_seconds)
        finally:
            self._ready = False
            if self._running:
                # Runs end at a page boundary soon; the lease covers the rest.
                for task in self._running:
                    task.cancel()
                await asyncio.wait(set(self._running), timeout=10)
            await session.close()
            await publisher.stop()

    async def _claim(self, limit: int) -> list[Claimed]:
        try:
            async with self.pool.acquire(timeout=5) as conn:
                rows = await conn.fetch(
                    _CLAIM, self.owner, self.lease_seconds, limit, self.settings.events_topic
                )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            self._ready = False
            log.warning("could not claim integrations", extra={"error": repr(exc)})
            return []
        self._ready = True
        now = time.time()
        out: list[Claimed] = []
        for r in rows:
            config = PollConfig.model_validate(r["config"])
            reconcile_at = r["reconcile_at"]
            due = config.reconcile_seconds is not None and (
                reconcile_at is None or reconcile_at.timestamp() <= now
            )
            out.append(
                Claimed(
                    r["id"], r["tenant"], r["kind"], config, r["headers_sealed"],
                    r["cursor"], r["failures"], due,
                )
            )  # fmt: skip
        return out

    async def _run_one(
        self, it: Claimed, publisher: Publisher, session: Any, allow: AllowList
    ) -> None:
        try:
            # A trace of its own: the events it publishes carry it on to the processors.
            with tracing.span("integration poll", attributes=_poll_attributes(it)):
                await self._sync(it, publisher, session, allow)
        except LeaseLost:
            log.warning("lease lost mid-run", extra={"integration": it.id})
        except SourceRefusedCredentials as exc:
            self.metrics.sync_errors.labels(it.kind, exc.reason).inc()
            await self._finish(it, "paused", str(exc), failures=0, delay=None, pause=True)
        except SourceRateLimited as exc:
            self.metrics.sync_errors.labels(it.kind, exc.reason).inc()
            wait = exc.retry_after if exc.retry_after is not None else self._backoff(it.failures)
            wait = min(wait, self.settings.sync_backoff_cap)
            await self._finish(it, "backing_off", str(exc), failures=it.failures, delay=wait)
        except (SourceError, BadPage, SealError) as exc:
            reason = exc.reason if isinstance(exc, SourceError) else "bad_response"
            self.metrics.sync_errors.labels(it.kind, reason).inc()
            await self._failed(it, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a publish that timed out, PostgreSQL trouble, …
            self.metrics.sync_errors.labels(it.kind, "internal").inc()
            log.exception("sync run failed", extra={"integration": it.id})
            await self._failed(it, f"internal error: {type(exc).__name__}")

    async def _failed(self, it: Claimed, message: str) -> None:
        failures = it.failures + 1
        if failures >= self.settings.sync_circuit_failures:
            await self._finish(
                it, "circuit_open", message, failures=failures,
                delay=self.settings.sync_circuit_seconds,
            )  # fmt: skip
        else:
            await self._finish(
                it, "backing_off", message, failures=failures, delay=self._backoff(failures)
            )

    def _backoff(self, failures: int) -> float:
        s = self.settings
        return retry_delay(failures, s.sync_backoff_base, s.sync_backoff_cap)

    async def _sync(
        self, it: Claimed, publisher: Publisher, session: Any, allow: AllowList
    ) -> None:
        s = self.settings
        headers: dict[str, str] = {}
        if it.headers_sealed:
            opened = keyring(s).open(it.headers_sealed, purpose=headers_purpose(it.id))
            headers = orjson.loads(opened)
        connector = CONNECTORS[it.kind](it.config)
        ctx = SourceContext(
            session=session,
            allow=allow,
            headers=headers,
            timeout=s.sync_request_timeout,
            max_bytes=s.sync_max_response_bytes,
            max_items=s.sync_max_page_items,
        )
        spec = PageSpec(
            it.id, it.config.collection, it.config.items_field, it.config.id_field,
            it.config.deleted_field,
        )  # fmt: skip
        full_pass = it.reconcile_due
        seen: set[str] = set()
        deadline = time.monotonic() + s.sync_max_run_seconds
        pages = 0
        finished = True
        async for page in connector.pages(ctx, None if full_pass else it.cursor):
            async with self.pool.acquire(timeout=5) as conn:
                known = await load_states(conn, it.id, item_ids(spec, page.items))
            changes = page_changes(it.tenant, spec, page.items, known)
            if changes.events:
                await publisher.publish(it.tenant, changes.events, actor=actors.integration(it.id))
            if full_pass:
                seen.update(changes.seen)
            await self._store_page(it, page.resume_cursor, changes.states)
            self.metrics.sync_pages.labels(it.kind).inc()
            self.metrics.sync_items.labels(it.kind).inc(len(changes.events))
            pages += 1
            if page.more and (pages >= s.sync_max_pages_per_run or time.monotonic() > deadline):
                finished = False  # bounded: the next run resumes from the stored cursor
                break
        if full_pass and finished and it.config.reconcile_deletes:
            await self._delete_missing(it, publisher, spec, seen)
        delay = 0.0 if not finished else float(it.config.interval_seconds)
        await self._finish(
            it, "ok", None, failures=0, delay=delay, reconciled=full_pass and finished
        )

    async def _store_page(
        self, it: Claimed, cursor: str | None, states: ItemStates, *, set_cursor: bool = True
    ) -> None:
        """After the page's events are acknowledged: its cursor and item states, fenced."""
        async with self.pool.acquire(timeout=5) as conn, conn.transaction():
            stored = await conn.fetchval(
                "UPDATE eventfold.integrations SET cursor = CASE WHEN $6 THEN $3 ELSE cursor END,"
                " items_synced = items_synced + $4, lease_until = now() + make_interval(secs => $5)"
                " WHERE id = $1 AND lease_owner = $2 RETURNING true",
                it.id,
                self.owner,
                cursor,
                len(states),
                self.lease_seconds,
                set_cursor,
            )
            if not stored:
                raise LeaseLost(it.id)
            await store_states(conn, it.id, states)

    async def _delete_missing(
        self, it: Claimed, publisher: Publisher, spec: PageSpec, seen: set[str]
    ) -> None:
        """Delete the items this integration published that the full pass did not see."""
        async with self.pool.acquire(timeout=5) as conn:
            rows = await conn.fetch(
                "SELECT item_id, seq FROM eventfold.integration_items"
                " WHERE integration = $1 AND hash <> $2 AND NOT (item_id = ANY($3::text[]))",
                it.id,
                DELETED,
                list(seen),
            )
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            states: ItemStates = {r["item_id"]: (r["seq"] + 1, DELETED) for r in chunk}
            events = [
                record_event(it.tenant, spec, item_id, "record.deleted", {}, seq, DELETED)
                for item_id, (seq, _) in states.items()
            ]
            await publisher.publish(it.tenant, events, actor=actors.integration(it.id))
            await self._store_page(it, None, states, set_cursor=False)
            self.metrics.sync_items.labels(it.kind).inc(len(events))

    async def _finish(
        self,
        it: Claimed,
        state: str,
        error: str | None,
        *,
        failures: int,
        delay: float | None,
        pause: bool = False,
        reconciled: bool = False,
    ) -> None:
        reconcile_in = it.config.reconcile_seconds if reconciled else None
        try:
            async with self.pool.acquire(timeout=5) as conn:
                await conn.execute(
                    "UPDATE eventfold.integrations SET state = $3, last_error = $4,"
                    " failures = $5, last_run_at = now(),"
                    " next_run_at = CASE WHEN $6::float8 IS NULL THEN next_run_at"
                    "   ELSE now() + make_interval(secs => $6) END,"
                    " paused = paused OR $7,"
                    " reconcile_at = CASE WHEN $8::float8 IS NOT NULL"
                    "   THEN now() + make_interval(secs => $8)"
                    "   WHEN reconcile_at IS NULL THEN now() ELSE reconcile_at END,"
                    " lease_owner = NULL, lease_until = NULL"
                    " WHERE id = $1 AND lease_owner = $2",
                    it.id,
                    self.owner,
                    state,
                    error,
                    failures,
                    delay,
                    pause,
                    float(reconcile_in) if reconcile_in is not None else None,
                )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("could not record the run", extra={"error": repr(exc)})
            return
        self.metrics.sync_state.labels(it.kind, state).inc()
        if error:
            log.info("sync run ended", extra={"integration": it.id, "state": state, "error": error})
