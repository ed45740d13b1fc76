"""The composition root: settings, clients, routes and processors wired into an aiohttp app.

``eventfold run`` asks for every part; ``serve api`` and ``serve ingest`` for
one each (``eventfold process NAME`` runs one processor with the operations
routes alone, :mod:`entrypoints.process`). Every client is opened and closed
in a ``cleanup_ctx``; each resource goes under its key of
:mod:`eventfold.appkeys`, where the gateway's and the read API's routes find it.
This package is the only one that knows every part: nothing imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.runtime.runner import Supervised
from entrypoints.registry import PROCESSORS, instances
from eventfold import gctune, malloctrim, openapi, placement, ratelimit, tracing
from eventfold.admission import Admission, WaitSlots
from eventfold.apikeys import ApiKeyDirectory
from eventfold.appkeys import (
    ADMISSION,
    API_KEYS,
    AUTH_LIMIT,
    CACHE,
    CURSORS,
    EVENT_TYPES,
    HEALTH,
    LOG_END,
    METRICS,
    PLACEMENT,
    POOL,
    RATE_LIMITER,
    REDIS,
    SETTINGS,
    TENANTS,
    VERIFIER,
    WAIT_SLOTS,
    WATCHER,
    WATCHERS,
)
from eventfold.auth import TokenVerifier
from eventfold.authlimit import AuthFailures, AuthLimit, trusted_networks
from eventfold.cache import RecordCache
from eventfold.checkpoints import CheckpointWatcher
from eventfold.clients import (
    close_placement,
    close_pool,
    open_placement,
    open_pool,
    redis_client,
)
from eventfold.cursors import CursorCodec
from eventfold.eventtypes.definitions import Registry
from eventfold.health import Health, HealthOut
from eventfold.logend import LogEnd
from eventfold.metrics import Metrics
from eventfold.ratelimit import Limits, RateLimiter
from eventfold.settings import HOME_SERVER, Settings
from eventfold.tenancy import TenantDirectory
from eventfold.web import (
    compression_middleware,
    cors_middleware,
    essential,
    json_response,
    request_middleware,
    tracing_middleware,
)

log = logging.getLogger("eventfold")


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
    if tracing.enabled():
        # Outermost: the server span covers everything the request costs.
        middlewares.insert(0, tracing_middleware)
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
    if parts.ingest or parts.api:
        # Either HTTP part accepts API keys and applies the tenants' rate limits.
        app.cleanup_ctx.append(_api_keys_ctx)
        app.cleanup_ctx.append(_rate_limiter_ctx)
        app.on_response_prepare.append(ratelimit.add_headers)
    if parts.ingest:
        from producers.app import setup as setup_ingest  # deferred: only the parts served

        setup_ingest(app)
    if parts.api:
        from api.app import setup as setup_api  # deferred: only the parts served

        setup_api(app)
    for name in parts.processors:
        app.cleanup_ctx.append(_processor_ctx(name))
    add_operations(app)
    # After every startup context (on_startup runs once cleanup_ctx has started).
    app.on_startup.append(_settle_gc)
    app.on_cleanup.append(_restore_gc)
    # Each shape documents the routes it has (built from the app's router on first call).
    openapi.install(app)
    return app


_GC_THRESHOLDS = web.AppKey("gc_thresholds", tuple)


async def _settle_gc(app: web.Application) -> None:
    """:func:`eventfold.gctune.settle` once the app's clients are up."""
    app[_GC_THRESHOLDS] = gctune.settle()


async def _restore_gc(app: web.Application) -> None:
    thresholds = app.get(_GC_THRESHOLDS)
    if thresholds is not None:
        gctune.restore(thresholds)


async def _postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = await open_pool(app[SETTINGS])
    try:
        placed = await open_placement(app[SETTINGS], pool)
    except BaseException:
        await close_pool(pool)
        raise
    app[POOL] = pool
    app[PLACEMENT] = placed
    app[TENANTS] = TenantDirectory(placed)
    app[EVENT_TYPES] = Registry(placed)
    for name, server_pool in placed.pools.items():
        check = "postgres" if server_pool is pool else f"postgres@{name}"
        app[HEALTH].add(check, check_postgres(server_pool), critical=True)
    try:
        yield
    finally:
        await close_placement(placed)
        await placement.close_directories()  # those the processors in this process opened
        await close_pool(pool)


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


async def _api_keys_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, placed = app[SETTINGS], app[PLACEMENT]
    directory = ApiKeyDirectory(
        settings.database_url,
        app[POOL],
        others=[
            (settings.server_urls[n], p) for n, p in placed.pools.items() if p is not app[POOL]
        ],
    )
    await directory.start()
    app[API_KEYS] = directory
    try:
        yield
    finally:
        await directory.stop()


async def _rate_limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    default = Limits(settings.rate_limit_default_rps, settings.rate_limit_default_burst)
    app[RATE_LIMITER] = RateLimiter(app.get(REDIS), app[METRICS], default)
    yield


async def _malloc_trim_ctx(_app: web.Application) -> AsyncIterator[None]:
    """Trim the C heap periodically: socket reads fragment it (see :mod:`eventfold.malloctrim`)."""
    async with malloctrim.trimming():
        yield


def _tenant_changed(app: web.Application, tenant: str | None) -> None:
    """A tenant's row changed (or such news may have been missed: ``None``)."""
    app[TENANTS].forget(tenant)
    if tenant is not None and CACHE in app:
        # A deleted tenant's read counts must not reach Redis after its keys went.
        app[CACHE].hot.drain(tenant)


async def _watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # One per database server: each server's projector commits (and notifies) its own.
    watchers: dict[str, CheckpointWatcher] = {}
    for name, pool in app[PLACEMENT].pools.items():
        watcher = watchers[name] = CheckpointWatcher(
            settings.server_urls[name],
            pool,
            consumer=f"{settings.consumer_group_prefix}.projector",
            topic=settings.events_topic,
        )
        if TENANTS in app:
            watcher.on_tenant_changed = functools.partial(_tenant_changed, app)
        await watcher.start()
    app[WATCHER] = watchers[HOME_SERVER]
    app[WATCHERS] = watchers
    # Connects to Kafka on the first token past the known end, not before.
    log_end = app[LOG_END] = LogEnd(settings, app[METRICS])
    try:
        yield
    finally:
        await log_end.close()
        for watcher in watchers.values():
            await watcher.stop()


def check_postgres(pool: asyncpg.Pool) -> Callable[[], object]:
    """The readiness check of PostgreSQL: a pooled connection answers within a second."""

    async def check() -> None:
        async with pool.acquire(timeout=1) as conn:
            await conn.fetchval("SELECT 1", timeout=1)

    return check


def _processor_ctx(name: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, placed = app[SETTINGS], app[PLACEMENT]
        running = []
        for label, server in instances(name, settings):
            instance = Supervised(
                label,
                PROCESSORS[name],
                settings.on_server(server),
                placed.pools[server],
                app[METRICS],
            )
            app[HEALTH].add(label, instance.check, critical=True)
            running.append(instance)
        try:
            yield
        finally:
            for instance in running:
                await instance.close()

    return ctx


def add_operations(app: web.Application) -> None:
    """The operators' routes: ``/health/live``, ``/health/ready`` and ``/metrics`` (they read
    ``app[HEALTH]`` and ``app[METRICS]``)."""
    app.router.add_get("/health/live", _live)
    app.router.add_get("/health/ready", _ready)
    app.router.add_get("/metrics", _metrics)


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


_HEALTH = "the state of each dependency"
openapi.register(
    openapi.Operation(
        "GET", "/health/live", "Liveness", "operations", secured=False,
        replies=(openapi.Reply(200, "the process is up", HealthOut),),
    ),
    openapi.Operation(
        "GET", "/health/ready", "Readiness", "operations", secured=False,
        replies=(
            openapi.Reply(200, _HEALTH + ": ok or degraded", HealthOut),
            openapi.Reply(503, _HEALTH + ": down", HealthOut),
        ),
    ),
    openapi.Operation(
        "GET", "/metrics", "Prometheus metrics", "operations", secured=False,
        replies=(openapi.Reply(200, "text format 0.0.4", content_type="text/plain",
                               schema={"type": "string"}),),
    ),
)  # fmt: skip
