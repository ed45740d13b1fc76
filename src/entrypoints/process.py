"""``eventfold process NAME``: one stream processor alone, with its health and metrics.

The processor runs under :class:`consumers.runtime.runner.Supervised` (restarts
with backoff, readiness), and the process answers ``/health/live``,
``/health/ready`` and ``/metrics`` on ``EVENTFOLD_HTTP_HOST``:``EVENTFOLD_HTTP_PORT``
as the HTTP processes do (CONTRACT.md), so each processor of a deployment is
probed and scraped like the rest. The operations routes are a convenience
next to the processor's job: when the address is taken (two processors on one
host with the same settings), the processor goes on without them and says so
in the log. ``--burst`` ends the process once the processor has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import asyncpg
from aiohttp import web

from consumers.runtime.runner import Supervised
from entrypoints.bootstrap import add_operations, check_postgres
from entrypoints.registry import PROCESSORS
from eventfold import gctune, malloctrim
from eventfold.appkeys import HEALTH, METRICS, SETTINGS
from eventfold.clients import close_pool, open_pool
from eventfold.health import Health
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.web import request_middleware

log = logging.getLogger("eventfold")


async def run(settings: Settings, name: str, *, burst: bool = False) -> None:
    """Run processor ``name`` until SIGINT/SIGTERM (or, with ``burst``, until caught up)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = await open_pool(settings)
    gctune.settle(gctune.GC_THRESHOLD_0_BATCH)  # the process's own: nothing to restore
    metrics = Metrics()
    processor = Supervised(name, PROCESSORS[name], settings, pool, metrics, burst=burst)
    runner = await _serve_operations(settings, metrics, pool, name, processor)
    try:
        # Stream processors read sockets as served processes do: the same heap holes.
        async with malloctrim.trimming():
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({processor.task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
    finally:
        await processor.close()
        if runner is not None:
            await runner.cleanup()
        await close_pool(pool)


async def _serve_operations(
    settings: Settings, metrics: Metrics, pool: asyncpg.Pool, name: str, processor: Supervised
) -> web.AppRunner | None:
    """Serve the operations routes for ``processor``; None when the address is taken."""
    app = web.Application(middlewares=[request_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health = Health(max_age=settings.health_cache_seconds)
    health.add("postgres", check_postgres(pool), critical=True)
    health.add(name, processor.check, critical=True)
    add_operations(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError as exc:
        log.error(
            "health and metrics not served: the address is taken",
            extra={
                "address": f"{settings.http_host}:{settings.http_port}",
                "error": repr(exc),
            },
        )
        await runner.cleanup()
        return None
    return runner


def main(settings: Settings, name: str, *, burst: bool) -> int:
    """The ``eventfold process`` command; its exit status."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings, name, burst=burst))
    return 0
