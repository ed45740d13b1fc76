"""Which PostgreSQL server holds each tenant: the placement directory.

A deployment has one database server (``main``, ``EVENTFOLD_DATABASE_URL``) or
several (``EVENTFOLD_DATABASE_SERVERS``). Every server is a complete Eventfold
database for the tenants placed on it: their schemas and their rows of the
platform tables, written by a projector working on that server alone, so a
batch is always a one-server transaction with that server's own checkpoints.

The directory (``eventfold.tenant_placement`` on ``main``) maps a tenant to its
server. A tenant is placed when it is created (``POST /v1/tenants``), before its
first event is published, on the server with the fewest tenants; a tenant the
directory does not name (one created before other servers were configured) is
on ``main`` (the first use of the directory gives each of them its entry). An entry
changes only when the tenant moves (``eventfold tenants move``); a process keeps what
it read for :data:`ENTRY_SECONDS`.

With one server nothing is looked up: every tenant is on ``main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

import asyncpg

from eventfold import db
from eventfold.settings import HOME_SERVER, Settings

#: Serialises placements, so concurrent creations count each other's tenants.
_PLACEMENT_LOCK = 7_340_117
#: How long a process trusts an entry it read: a tenant move changes an entry, and
#: waits this long (and more) before the old server's copy goes (eventfold.tenantmove).
ENTRY_SECONDS = 2.0


#: Processors that work on one database server's tenants: with several servers, one
#: instance runs per server, with its pool there. The others (the archive, analytics)
#: run once, on ``main``.
PER_SERVER_PROCESSORS = frozenset({"projector", "cache", "notifier", "workflows", "sync"})


def server_group(group: str, settings: Settings) -> str:
    """The Kafka consumer group of a log reader working on ``settings``' server: each
    server's reads the whole log, so each needs a group of its own."""
    return f"{group}-on-{settings.database_server}" if settings.database_server else group


class UnknownServer(LookupError):
    """The directory names a server these settings do not configure."""


class Directory:
    """Tenant → server lookups against ``main``, kept in memory once read."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        self.settings = settings
        self.servers = list(settings.server_urls)
        self._pool = pool
        self._opened = False
        self._adopted = False
        #: tenant -> (when read, its server).
        self._known: dict[str, tuple[float, str]] = {}
        self._lock = asyncio.Lock()

    @property
    def single(self) -> bool:
        """Whether ``main`` is the only server (nothing to look up)."""
        return len(self.servers) == 1

    async def _home(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await db.create_pool(self.settings.directory_url, max_size=4)
                self._opened = True
                await db.migrate(self._pool)
            if not self._adopted:
                # Tenants created while main was the only server get their entry, so a
                # tenant without one is one not created yet (never cached as main's).
                async with self._pool.acquire(timeout=10) as conn:
                    await conn.execute(
                        "INSERT INTO eventfold.tenant_placement (tenant, server)"
                        " SELECT id, $1 FROM eventfold.tenants ON CONFLICT DO NOTHING",
                        HOME_SERVER,
                    )
                self._adopted = True
            return self._pool

    async def close(self) -> None:
        """Close the pool this directory opened itself (not one it was given)."""
        if self._opened and self._pool is not None:
            await self._pool.close()
            self._pool, self._opened = None, False

    async def servers_of(self, tenants: Iterable[str], *, fresh: bool = False) -> dict[str, str]:
        """Each tenant's server (``main`` for a tenant the directory does not name);
        read again when ``fresh``."""
        wanted = set(tenants)
        if self.single:
            return dict.fromkeys(wanted, HOME_SERVER)
        now = time.monotonic()
        missing = [
            t
            for t in wanted
            if fresh or now - self._known.get(t, (-ENTRY_SECONDS, ""))[0] >= ENTRY_SECONDS
        ]
        if missing:
            pool = await self._home()
            async with pool.acquire(timeout=10) as conn:
                rows = await conn.fetch(
                    "SELECT tenant, server FROM eventfold.tenant_placement"
                    " WHERE tenant = ANY($1::text[])",
                    missing,
                )
            # Only entries are kept: a tenant without one is not created yet (every
            # tenant from before the directory was adopted on main, see _home).
            self._known.update((r["tenant"], (now, r["server"])) for r in rows)
            if len(self._known) > 100_000:
                self._known.clear()  # bounded: a reset beats an LRU for this size
        out = {t: self._known.get(t, (now, HOME_SERVER))[1] for t in wanted}
        for tenant, server in out.items():
            if server not in self.servers:
                raise UnknownServer(
                    f"tenant {tenant} is placed on server {server!r}, which"
                    " EVENTFOLD_DATABASE_SERVERS does not name"
                )
        return out

    async def server_of(self, tenant: str) -> str:
        """The server holding ``tenant``."""
        return (await self.servers_of([tenant]))[tenant]

    async def counts(self) -> dict[str, int]:
        """How many tenants the directory places on each server (every tenant is
        ``main``'s with one server)."""
        if self.single:
            assert self._pool is not None
            async with self._pool.acquire(timeout=10) as conn:
                return {HOME_SERVER: await conn.fetchval("SELECT count(*) FROM eventfold.tenants")}
        pool = await self._home()
        async with pool.acquire(timeout=10) as conn:
            rows = await conn.fetch(
                "SELECT server, count(*) AS n FROM eventfold.tenant_placement GROUP BY server"
            )
        return {r["server"]: r["n"] for r in rows}

    async def place(self, tenant: str) -> str:
        """Place a new ``tenant`` on the server with the fewest tenants; idempotent
        (a tenant placed already keeps its server)."""
        if self.single:
            return HOME_SERVER
        pool = await self._home()
        async with pool.acquire(timeout=10) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PLACEMENT_LOCK)
            placed = await conn.fetchval(
                "SELECT server FROM eventfold.tenant_placement WHERE tenant = $1", tenant
            )
            if placed is None:
                rows = await conn.fetch(
                    "SELECT server, count(*) AS n FROM eventfold.tenant_placement GROUP BY server"
                )
                placed = choose_server({r["server"]: r["n"] for r in rows}, self.servers)
                await conn.execute(
                    "INSERT INTO eventfold.tenant_placement (tenant, server) VALUES ($1, $2)",
                    tenant,
                    placed,
                )
        self._known[tenant] = (time.monotonic(), placed)
        return str(placed)


def choose_server(counts: dict[str, int], servers: list[str]) -> str:
    """The placement policy: the server with the fewest tenants, the first configured
    one on a tie (``main`` before the others)."""
    return min(servers, key=lambda s: (counts.get(s, 0), servers.index(s)))


class Placement:
    """A pool on every server and the directory: the way to a tenant's database."""

    def __init__(self, directory: Directory, pools: dict[str, asyncpg.Pool]) -> None:
        self.directory = directory
        self.pools = pools

    @property
    def home(self) -> asyncpg.Pool:
        """The pool on ``main``."""
        return self.pools[HOME_SERVER]

    async def pool_for(self, tenant: str) -> asyncpg.Pool:
        """The pool on the server holding ``tenant``."""
        if self.directory.single:
            return self.home
        return self.pools[await self.directory.server_of(tenant)]

    @contextlib.asynccontextmanager
    async def acquire(self, tenant: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection on ``tenant``'s server (waited for 5 s at most)."""
        pool = await self.pool_for(tenant)
        async with pool.acquire(timeout=5) as conn:
            yield conn


async def pool_of(source: asyncpg.Pool | Placement, tenant: str) -> asyncpg.Pool:
    """The pool holding ``tenant``: ``source`` itself, or its server's in a placement."""
    return await source.pool_for(tenant) if isinstance(source, Placement) else source


_directories: dict[str, Directory] = {}


def directory(settings: Settings) -> Directory:
    """This process's directory for ``settings``' servers (one per ``main``), shared by
    the processors it runs on each server."""
    key = f"{settings.directory_url} {' '.join(settings.database_servers)}"
    found = _directories.get(key)
    if found is None:
        found = _directories[key] = Directory(settings)
    return found


async def close_directories() -> None:
    """Close the pools the shared directories opened (a process ending)."""
    for found in list(_directories.values()):
        await found.close()
    _directories.clear()
