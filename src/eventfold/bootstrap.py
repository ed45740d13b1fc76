"""One bootstrap wiring settings, clients, routes and processors into an aiohttp app.

``eventfold run`` asks for every part; ``serve api``, ``serve ingest`` and
``process NAME`` ask for one each. Every client is opened and closed in a
``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from consumers.registry import PROCESSORS, Processor
from eventfold import db, gctune, malloctrim
from eventfold.auth import TokenVerifier
from eventfold.authlimit import AUTH_LIMIT, AuthFailures, AuthLimit, trusted_networks
from eventfold.cache import CACHE, RecordCache
from eventfold.checkpoints import CheckpointWatcher
from eventfold.cursors import CursorCodec
from eventfold.eventtypes.definitions import EVENT_TYPES, Registry
from eventfold.faults import is_retriable
from eventfold.health import HEALTH, Health
from eventfold.logend import LogEnd
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.tenancy import TenantDirectory, ensure_tenant_roles
from eventfold.web import (
    ADMISSION,
    CURSORS,
    LOG_END,
    METRICS,
    POOL,
    REDIS,
    SETTINGS,
    TENANTS,
    VERIFIER,
    WAIT_SLOTS,
    WATCHER,
    Admission,
    WaitSlots,
    compression_middleware,
    cors_middleware,
    essential,
    json_response,
    request_middleware,
)

log = logging.getLogger("eventfold")
#: A processor that ran this long before failing starts its backoff afresh.
_HEALTHY_RUN_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Parts:
    """Which parts one process runs."""

    api: bool = True
    ingest: bool = True
    processors: tuple[str, ...] = tuple(PROCESSORS)


def create_app(settings: Settings, parts: Parts | None = None) -> web.Application:
    """The application for ``parts`` (default: everything, as ``eventfold run``)."""
    parts = parts or Parts()
    # Outermost first: CORS and compression also apply to the problem answers.
    middlewares = [compression_middleware(settings.compress_min_bytes), request_middleware]
    if settings.cors_origins:
        middlewares.insert(0, cors_middleware(settings.cors_origins))
    app = web.Application(
        middlewares=middlewares, client_max_size=settings.max_body_bytes + 64 * 1024
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[VERIFIER] = TokenVerifier.from_settings(settings)
    app[CURSORS] = CursorCodec(settings.jwt_secret)
    app[HEALTH] = Health(max_age=settings.health_cache_seconds)
    app[ADMISSION] = Admission(settings.http_max_in_flight)
    app[WAIT_SLOTS] = WaitSlots(settings.consistency_waits_per_tenant)
    app[AUTH_LIMIT] = AuthLimit(
        AuthFailures(settings.auth_failure_burst, settings.auth_failure_per_second),
        trusted_networks(settings.trusted_proxies),
    )
    app.cleanup_ctx.append(_postgres_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_watcher_ctx)
    app.cleanup_ctx.append(_malloc_trim_ctx)
    if parts.ingest:
        from producers.app import setup as setup_ingest

        setup_ingest(app)
    if parts.api:
        from api.app import setup as setup_api

        setup_api(app)
    for name in parts.processors:
        app.cleanup_ctx.append(_processor_ctx(name))
    app.router.add_get("/health/live", _live)
    app.router.add_get("/health/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    # After every startup context (on_startup runs once cleanup_ctx has started).
    app.on_startup.append(_settle_gc)
    app.on_cleanup.append(_restore_gc)
    # Each shape documents the routes it has (built from the app's router on first call).
    from api.openapi import install as install_openapi

    install_openapi(app)
    return app


_GC_THRESHOLDS = web.AppKey("gc_thresholds", tuple)


async def _settle_gc(app: web.Application) -> None:
    """:func:`eventfold.gctune.settle` once the app's clients are up."""
    app[_GC_THRESHOLDS] = gctune.settle()


async def _restore_gc(app: web.Application) -> None:
    thresholds = app.get(_GC_THRESHOLDS)
    if thresholds is not None:
        gctune.restore(thresholds)


async def open_pool(settings: Settings, *, attempts: int = 30) -> asyncpg.Pool:
    """Connect to PostgreSQL (retrying while it starts) and run the platform migration."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            pool = await db.create_pool(
                settings.database_url,
                max_size=20,
                statement_cache_size=settings.pg_statement_cache_size,
            )
            await db.migrate(pool)
            await ensure_tenant_roles(pool)  # tenants created before they had roles
            return pool
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if attempt == attempts:
                raise
            log.warning("postgres not reachable, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


#: Connections per Redis client (per process and use): the gateway makes two calls
#: per request, so this covers a few hundred requests in flight.
REDIS_MAX_CONNECTIONS = 128


def redis_client(settings: Settings) -> Redis:
    """A Redis client whose calls fail fast instead of hanging.

    1 s per socket operation and one quick retry (a pooled connection may be
    stale after a Redis restart), not redis-py's default of three with backoff:
    a call ends within about 2 s, and callers fail open when it does not answer.
    """
    # A blocking pool: past its connections a call waits (up to 1 s) for one to come
    # back instead of failing at once; under a burst of concurrent requests the
    # default pool raised MaxConnectionsError and callers failed open (no rate limit,
    # no dedup) although Redis was fine.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=1.0,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )
    client: Redis = Redis.from_pool(pool)
    return client


async def _postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = await open_pool(app[SETTINGS])
    app[POOL] = pool
    app[TENANTS] = TenantDirectory(pool)
    app[EVENT_TYPES] = Registry(pool)
    app[HEALTH].add("postgres", _check_postgres(pool), critical=True)
    try:
        yield
    finally:
        await _close_pool(pool)


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully within 10 s (connections in use get released), then terminate."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("postgres pool not closed cleanly, terminating", extra={"error": repr(exc)})
        pool.terminate()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = redis_client(app[SETTINGS])
    app[REDIS] = client
    app[HEALTH].add("redis", client.ping, critical=False)
    # The record cache has its own client (short deadlines, no retries) behind a
    # breaker; while the breaker is open the process reports ``degraded``.
    cache = RecordCache.from_settings(app[SETTINGS], app[METRICS])
    app[CACHE] = cache
    app[HEALTH].add("cache_breaker", cache.check, critical=False)
    cache.start()
    try:
        yield
    finally:
        await cache.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 5)


async def _malloc_trim_ctx(_app: web.Application) -> AsyncIterator[None]:
    """Trim the C heap periodically: socket reads fragment it (see :mod:`eventfold.malloctrim`)."""
    async with malloctrim.trimming():
        yield


async def _watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    watcher = CheckpointWatcher(
        settings.database_url,
        app[POOL],
        consumer=f"{settings.consumer_group_prefix}.projector",
        topic=settings.events_topic,
    )
    await watcher.start()
    app[WATCHER] = watcher
    # Connects to Kafka on the first token past the known end, not before.
    log_end = app[LOG_END] = LogEnd(settings, app[METRICS])
    try:
        yield
    finally:
        await log_end.close()
        await watcher.stop()


def _check_postgres(pool: asyncpg.Pool) -> Callable[[], object]:
    async def check() -> None:
        async with pool.acquire(timeout=1) as conn:
            await conn.fetchval("SELECT 1", timeout=1)

    return check


def _processor_ctx(name: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        running: list[Processor] = []  # the supervisor's current instance

        def started(processor: Processor) -> None:
            running[:] = [processor]

        task = asyncio.create_task(
            supervise(name, app[SETTINGS], app[POOL], app[METRICS], stop, on_start=started),
            name=name,
        )
        app[HEALTH].add(name, lambda: _consuming(task, running), critical=True)
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)

    return ctx


class NotConsuming(RuntimeError):
    """A processor that is not doing its job yet (or any more): no assignment, rebalancing."""


async def _consuming(task: asyncio.Task[None], running: list[Processor]) -> None:
    """The readiness check of a processor: running, and doing its job (see ``is_ready``)."""
    if task.done():
        raise RuntimeError("processor stopped")
    if not running or not running[0].is_ready():
        raise NotConsuming("processor not consuming")


async def supervise(
    name: str,
    settings: Settings,
    pool: asyncpg.Pool,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    burst: bool = False,
    on_start: Callable[[Processor], None] | None = None,
) -> None:
    """Run processor ``name`` until ``stop``, restarting it with backoff if it fails.

    ``on_start`` is handed each instance as it starts (a restart makes a new one).
    """
    factory = PROCESSORS.get(name)
    if factory is None:
        raise ValueError(f"unknown processor {name!r}; known: {', '.join(PROCESSORS)}")
    delay = 1.0
    # The gauge reads the running instance's own readiness at scrape time, so the
    # metric and /health/ready never disagree; stopped or failed, it is 0.
    ready = metrics.processor_ready.labels(name)
    ready.set_function(lambda: 0.0)
    while not stop.is_set():
        started = time.monotonic()
        try:
            processor = factory(settings, pool, metrics)
            ready.set_function(lambda p=processor: float(p.is_ready()))  # type: ignore[misc]
            if on_start is not None:
                on_start(processor)
            await processor.run(stop, burst=burst)
            ready.set_function(lambda: 0.0)
            return
        except Exception as exc:
            ready.set_function(lambda: 0.0)
            if time.monotonic() - started > _HEALTHY_RUN_SECONDS:
                delay = 1.0  # it ran well for a while: this is a new incident
            if is_retriable(exc):
                log.warning(
                    "processor lost a dependency, restarting",
                    extra={"processor": name, "error": repr(exc), "delay": delay},
                )
            else:
                log.exception("processor failed, restarting", extra={"processor": name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.5))  # noqa: S311
            delay = min(delay * 2, 30.0)


@essential
async def _live(_request: web.Request) -> web.Response:
    return json_response({"status": "ok", "checks": {}})


@essential
async def _ready(request: web.Request) -> web.Response:
    report = await request.app[HEALTH].report()
    return json_response(report, status=503 if report["status"] == "down" else 200)


@essential
async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
