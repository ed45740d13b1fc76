"""Opening the stores every process talks to: the PostgreSQL pool and the Redis clients.

Each opener is the one way a process gets its client, with the deadlines and
retries that make a call fail fast instead of hanging (a caller that cannot
reach a dependency fails open or answers 503; it never waits without end).
Every Redis client comes from :func:`open_redis`, which honours Redis Sentinel
(``EVENTFOLD_REDIS_SENTINELS``): connections go to the master the sentinels name.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from eventfold import db
from eventfold.backoff import Backoff, retrying
from eventfold.placement import Directory, Placement
from eventfold.settings import HOME_SERVER, Settings
from eventfold.tenancy import ensure_tenant_roles

log = logging.getLogger("eventfold")

#: Connections per Redis client (per process and use): the gateway makes two calls
#: per request, so this covers a few hundred requests in flight.
REDIS_MAX_CONNECTIONS = 128
_POSTGRES_DOWN = (OSError, asyncpg.PostgresError, TimeoutError)


async def open_pool(settings: Settings, *, attempts: int = 30) -> asyncpg.Pool:
    """Connect to PostgreSQL (retrying while it starts) and run the platform migration."""

    async def connect() -> asyncpg.Pool:
        pool = await db.create_pool(
            settings.database_url,
            max_size=20,
            statement_cache_size=settings.pg_statement_cache_size,
        )
        await db.migrate(pool)
        await ensure_tenant_roles(pool)  # tenants created before they had roles
        return pool

    pool: asyncpg.Pool = await retrying(
        connect,
        retry_on=lambda exc: isinstance(exc, _POSTGRES_DOWN),
        backoff=Backoff(0.5, 5.0),
        what="postgres not reachable",
        attempts=attempts,
    )
    return pool


async def open_placement(settings: Settings, main: asyncpg.Pool) -> Placement:
    """Pools on every database server (``main``'s is ``main``) and the directory."""
    pools = {HOME_SERVER: main}
    try:
        for name in list(settings.server_urls)[1:]:
            pools[name] = await open_pool(settings.on_server(name))
    except BaseException:
        for name, pool in pools.items():
            if name != HOME_SERVER:
                await close_pool(pool)
        raise
    return Placement(Directory(settings, main), pools)


async def close_placement(placed: Placement) -> None:
    """Close the pools :func:`open_placement` opened (not ``main``'s)."""
    for name, pool in placed.pools.items():
        if name != HOME_SERVER:
            await close_pool(pool)


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully within 10 s (connections in use get released), then terminate."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("postgres pool not closed cleanly, terminating", extra={"error": repr(exc)})
        pool.terminate()


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
    return open_redis(
        settings,
        settings.redis_url,
        pool_timeout=1.0,
        max_connections=REDIS_MAX_CONNECTIONS,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )


def open_redis(
    settings: Settings, url: str, *, pool_timeout: float | None = None, **options: Any
) -> Redis:
    """A client of the Redis ``url`` names, its connections made with ``options``.

    ``pool_timeout`` set: a blocking pool (past ``max_connections`` a call waits that
    long for a free connection); None: one that raises at once. When
    ``settings.through_sentinel(url)``, every new connection goes to the master the
    sentinels name at that moment (``url`` still gives the database, credentials
    and TLS): a connection that fails, or meets a read-only replica (the old master
    demoted), is dropped and the next one asks the sentinels again, so a failover is
    followed without a restart. Commands fail fast meanwhile (no master: the
    connection is refused, or the sentinels name none), as with a Redis that is down.
    """
    if not settings.through_sentinel(url):
        pool_class = ConnectionPool if pool_timeout is None else BlockingConnectionPool
        extra = {} if pool_timeout is None else {"timeout": pool_timeout}
        return Redis.from_pool(pool_class.from_url(url, **extra, **options))
    target: dict[str, Any] = {k: v for k, v in parse_url(url).items() if k not in ("host", "port")}
    if target.pop("connection_class", None) is SSLConnection:
        target["ssl"] = True  # the sentinel pool picks its own (TLS) connection class
    # The sentinels are asked with the same socket deadlines, and without retries:
    # discovery moves on to the next sentinel instead.
    sentinels = Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={k: v for k, v in options.items() if k.startswith("socket_")},
    )
    if pool_timeout is not None:
        target["timeout"] = pool_timeout
    client: Redis = sentinels.master_for(
        settings.redis_sentinel_service,
        connection_pool_class=_SentinelPool if pool_timeout is None else _BlockingSentinelPool,
        **target,
        **options,
    )
    return client


class _SentinelPool(SentinelConnectionPool):
    """redis-py's pool of a Sentinel-named master that also closes the sentinel clients.

    redis-py leaves the sentinels' own clients to their creator; here the pool is
    their only owner, so closing the client (a full disconnect) closes them too.
    """

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the connections; on a full disconnect, the sentinels' ones as well."""
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """The Sentinel pool that waits for a free connection, as ``redis_client``'s does.

    The Sentinel pool adds master discovery to connecting and checks of ownership
    on release; the blocking pool replaces taking and returning connections. The
    two override different methods, so together they do both.
    """
