"""A PostgreSQL database of the benchmark's own, on the shared server, dropped afterwards.

Some processors serve every tenant of their database, not one topic: a
notifier delivers every endpoint's pending deliveries, a sync runner polls
every integration. On a database other people's tests share, their notifiers
would deliver (and fail, and retry) the benchmark's webhooks and the
benchmark's processes theirs, and the figures would count both. A phase with
such a processor runs on a database created for it: Eventfold's processes
migrate an empty database when they start.

Tenant roles (``ef_t_<tenant>``) are per server, not per database, so the
roles the phase's tenants got are dropped with the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from eventfold.ids import tenant_role


def with_database(dsn: str, name: str) -> str:
    """``dsn`` naming database ``name`` instead of its own."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@asynccontextmanager
async def private_database(
    dsn: str, run_id: str, tenants: list[str] | None = None
) -> AsyncIterator[str]:
    """Create database ``eventfold_bench_<run_id>``; yield its DSN; drop it and ``tenants``' roles.

    ``tenants`` may grow while the block runs (the caller's list is read at the end).
    """
    name = f"eventfold_bench_{run_id}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for tenant in tenants or []:
                await admin.execute(f"DROP ROLE IF EXISTS {tenant_role(tenant)}")
        finally:
            await admin.close()
