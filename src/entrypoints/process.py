"""``eventfold process NAME``: one stream processor alone, with its health and metrics.

The processor runs under :class:`consumers.runtime.runner.Supervised` (restarts
with backoff, readiness), and the process answers ``/health/live``,
``/health/ready`` and ``/metrics`` on ``EVENTFOLD_HTTP_HOST``:``EVENTFOLD_HTTP_PORT``
as the HTTP processes do (CONTRACT.md), so each processor of a deployment is
probed and scraped like the rest. ``/health/ready`` is ``ok`` only once the
processor does its job: a Kafka processor holds its partitions and knows how
far behind their ends it is, a PostgreSQL poller (notifier, sync) had its
last poll answered, the analytics worker restored its tables.

The address is bound before the processor starts (:mod:`entrypoints.listen`):
when it is taken, the command stops with exit status 1 and one line naming it (a
second processor on one host needs a port of its own), as a processor nobody can
probe or scrape is one nobody can tell from a dead one. ``--burst`` ends the process
once the processor has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

from aiohttp import web

from consumers.runtime.runner import Supervised
from entrypoints.bootstrap import add_operations, check_postgres
from entrypoints.listen import CannotListen, listen
from entrypoints.registry import PROCESSORS, instances
from eventfold import gctune, malloctrim, placement
from eventfold.appkeys import HEALTH, METRICS, SETTINGS
from eventfold.clients import close_placement, close_pool, open_placement, open_pool
from eventfold.health import Health
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.web import request_middleware


async def run(settings: Settings, name: str, *, burst: bool = False) -> None:
    """Run processor ``name`` until SIGINT/SIGTERM (or, with ``burst``, until caught up).

    Raises :class:`CannotListen` before the processor starts when its address cannot be bound.
    """
    socks = listen(settings, "health and metrics")
    try:
        await _run(settings, name, socks, burst=burst)
    finally:
        for sock in socks:
            sock.close()


async def _run(settings: Settings, name: str, socks: list[socket.socket], *, burst: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = await open_pool(settings)
    runner: web.AppRunner | None = None
    try:
        gctune.settle(gctune.GC_THRESHOLD_0_BATCH)  # the process's own: nothing to restore
        metrics = Metrics()
        health = Health(max_age=settings.health_cache_seconds)
        health.add("postgres", check_postgres(pool), critical=True)
        runner = await _serve_operations(settings, metrics, health, socks)
        placed = await open_placement(settings, pool)
        # One instance per database server for those working on a server's tenants.
        # No await between the starts and the checks' registration: no probe sees the
        # process without its processors.
        running = [
            Supervised(
                label,
                PROCESSORS[name],
                settings.on_server(server),
                placed.pools[server],
                metrics,
                burst=burst,
            )
            for label, server in instances(name, settings)
        ]
        for label, processor in zip(instances(name, settings), running, strict=True):
            health.add(label[0], processor.check, critical=True)
        try:
            # Stream processors read sockets as served processes do: the same heap holes.
            async with malloctrim.trimming():
                stopped = asyncio.create_task(stop.wait())
                # Burst: done once every instance caught up; otherwise one ending is news.
                pending: set[asyncio.Task[None]] = {p.task for p in running}
                while pending and not stopped.done():
                    done, _ = await asyncio.wait(
                        pending | {stopped}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending -= done
                    if not burst:
                        break
                stopped.cancel()
        finally:
            for processor in running:
                await processor.close()
            await close_placement(placed)
            await placement.close_directories()
    finally:
        if runner is not None:
            await runner.cleanup()
        await close_pool(pool)


async def _serve_operations(
    settings: Settings, metrics: Metrics, health: Health, socks: list[socket.socket]
) -> web.AppRunner:
    """Serve the operations routes (``health``, ``metrics``) on ``socks``."""
    app = web.Application(middlewares=[request_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health
    add_operations(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for sock in socks:
        await web.SockSite(runner, sock).start()
    return runner


def main(settings: Settings, name: str, *, burst: bool) -> int:
    """The ``eventfold process`` command; its exit status (1: its address cannot be bound)."""
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(settings, name, burst=burst))
    except CannotListen as exc:
        print(f"eventfold process {name}: {exc}", file=sys.stderr)
        return 1
    return 0
