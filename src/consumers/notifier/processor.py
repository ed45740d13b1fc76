"""The notifier processor: schedule deliveries from the history, deliver them, forever.

Every round it schedules (:mod:`consumers.notifier.schedule`) and then claims
due deliveries (:mod:`consumers.notifier.delivery`), each attempt running as
its own task within the per-endpoint and per-tenant caps. Everything it must
remember (positions, deliveries, ``next_attempt_at``, leases) is in
PostgreSQL, so a restart neither loses a delivery nor attempts one early; any
number of notifiers may run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import aiohttp
import asyncpg

from consumers.notifier import delivery
from consumers.notifier.delivery import Claimed
from consumers.notifier.schedule import Scheduler
from eventfold.egress import AllowList, guarded_session
from eventfold.metrics import Metrics
from eventfold.sealing import keyring
from eventfold.settings import Settings

log = logging.getLogger("eventfold.notifier")

#: Attempts in flight at once in this process, per endpoint, per tenant. An endpoint
#: answering in 20 ms takes 1,000 deliveries/s with 20 in flight; the caps keep a slow
#: endpoint (or tenant) to its own share of the process's slots.
MAX_IN_FLIGHT = 512
PER_ENDPOINT = 64
PER_TENANT = 128
#: How often to look for new events and due retries when idle.
POLL_SECONDS = 0.1
#: A pause before each claim, so attempts finishing together free their slots in one claim.
CLAIM_GATHER_SECONDS = 0.005
#: How often the pending/exhausted gauges are refreshed.
GAUGE_SECONDS = 5.0
#: How often lines whose head a race left unmarked are found (:func:`delivery.sweep`).
SWEEP_SECONDS = 5.0


class Notifier:
    """Delivers every applied event to the tenant's matching webhook endpoints."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.settings = settings
        self._pool = pool
        self._metrics = metrics
        self._allow = AllowList.parse(settings.webhook_allow_hosts)
        self._keys = keyring(settings)
        self._scheduler = Scheduler(pool)
        self._recorder = delivery.Recorder(pool, metrics, settings.webhook_retry_schedule)
        self._timeout = settings.webhook_timeout_seconds
        self._by_hook: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._ready = False

    def is_ready(self) -> bool:
        """Whether the notifier is scheduling and delivering (it reads PostgreSQL, not Kafka):
        its last round answered, the first one included, which also counted its backlog
        (``eventfold_webhook_pending``)."""
        return self._ready

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Schedule and deliver until ``stop`` is set (or, in burst mode, nothing is due)."""
        stop = stop or asyncio.Event()
        # No cap per host: the caps are per endpoint (above), and many tenants' endpoints
        # may share one host (an automation service): one slow endpoint there must not
        # hold the connections of the others.
        session = guarded_session(self._allow, limit=MAX_IN_FLIGHT, limit_per_host=0)
        gauges_at = scheduled_at = swept_at = 0.0
        try:
            while not stop.is_set():
                try:
                    created = 0
                    # Scheduling scans every subscribed tenant: once a poll interval,
                    # not once per finished attempt.
                    if time.monotonic() - scheduled_at >= POLL_SECONDS:
                        scheduled_at = time.monotonic()
                        created = await self._scheduler.run_once()
                    if time.monotonic() - swept_at >= SWEEP_SECONDS:
                        swept_at = time.monotonic()
                        async with self._pool.acquire(timeout=5) as conn:
                            created += await delivery.sweep(conn)
                    started = await self._deliver_due(session)
                    if time.monotonic() - gauges_at > GAUGE_SECONDS:
                        gauges_at = time.monotonic()
                        await self._refresh_gauges()
                    self._ready = True
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    self._ready = False
                    log.warning("notifier round failed", extra={"error": repr(exc)})
                    created = started = 0
                    await _sleep_or_stop(stop, 1.0)
                    continue
                if burst and not created and not started and not self._tasks:
                    return
                if not created and not started:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                # Attempts finishing together are claimed for in one query.
                await asyncio.sleep(CLAIM_GATHER_SECONDS)
        finally:
            self._ready = False
            # Attempts in flight end here; their leases expire and they run again.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._recorder.close()
            await session.close()

    async def _deliver_due(self, session: aiohttp.ClientSession) -> int:
        room = MAX_IN_FLIGHT - len(self._tasks)
        if room <= 0:
            return 0
        claimed = await delivery.claim(
            self._pool,
            busy_hooks=[h for h, n in self._by_hook.items() if n >= PER_ENDPOINT],
            busy_tenants=[t for t, n in self._by_tenant.items() if n >= PER_TENANT],
            per_hook=PER_ENDPOINT,
            per_tenant=PER_TENANT,
            limit=room,
            lease_seconds=self._timeout + 30,
        )
        for item in claimed:
            self._by_hook[item.webhook_id] += 1
            self._by_tenant[item.tenant] += 1
            task = asyncio.create_task(self._deliver(session, item), name=f"webhook-{item.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def _deliver(self, session: aiohttp.ClientSession, item: Claimed) -> None:
        try:
            result = await delivery.attempt(session, self._keys, self._allow, item, self._timeout)
            await self._recorder.record(item, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not recorded: the lease expires and the attempt is made again.
            log.warning("webhook attempt not recorded", extra={"error": repr(exc)})
        finally:
            self._by_hook[item.webhook_id] -= 1
            self._by_tenant[item.tenant] -= 1
            if self._by_hook[item.webhook_id] <= 0:
                del self._by_hook[item.webhook_id]
            if self._by_tenant[item.tenant] <= 0:
                del self._by_tenant[item.tenant]
            self._wake.set()  # a line's next delivery may be due now

    async def _refresh_gauges(self) -> None:
        async with self._pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE state = 'pending') AS pending,"
                " count(*) FILTER (WHERE state = 'dead') AS dead,"
                " (SELECT count(*) FROM eventfold.webhooks"
                "  WHERE disabled_at IS NOT NULL AND deleted_at IS NULL) AS disabled"
                " FROM eventfold.webhook_deliveries WHERE state IN ('pending', 'dead')"
            )
        if row is not None:
            self._metrics.webhook_pending.set(row["pending"])
            self._metrics.webhook_dead.set(row["dead"])
            self._metrics.webhook_endpoints_disabled.set(row["disabled"])


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
