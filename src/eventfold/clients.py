"""Opening the stores every process talks to: the PostgreSQL pool and the Redis client.

Each opener is the one way a process gets its client, with the deadlines and
retries that make a call fail fast instead of hanging (a caller that cannot
reach a dependency fails open or answers 503; it never waits without end).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from eventfold import db
from eventfold.backoff import Backoff, retrying
from eventfold.settings import Settings
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
