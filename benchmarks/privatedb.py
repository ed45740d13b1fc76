"""A PostgreSQL database of the benchmark's own, on the shared server, dropped afterwards.

Some processors serve every tenant of their database, not one topic: a
notifier delivers every endpoint's pending deliveries, a sync runner polls
every integration. On a database other people's tests share, their notifiers
would deliver (and fail, and retry) the benchmark's webhooks and the
benchmark's processes theirs, and the figures would count both. A phase with
such a processor runs on a database created for it: Eventfold's processes
migrate an empty database when they start. Creating one needs CREATEDB, which
the application role does not have: see :data:`ADMIN_URL_VARIABLE`.

Tenant roles (``ef_t_<tenant>``) are per server, not per database, so the
roles the phase's tenants got are dropped with the database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from eventfold.ids import tenant_role

#: A DSN of a role allowed to create databases (CREATEDB), for the private databases.
#: Without it the application's own DSN is tried; since the application role is no
#: superuser and has no CREATEDB (issue 21), that is refused unless an operator granted it.
ADMIN_URL_VARIABLE = "EVENTFOLD_BENCH_ADMIN_DATABASE_URL"


class PrivateDatabaseRefused(RuntimeError):
    """PostgreSQL refused to create the phase's database (the role has no CREATEDB)."""


def with_database(dsn: str, name: str) -> str:
    """``dsn`` naming database ``name`` instead of its own."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@asynccontextmanager
async def private_database(
    dsn: str, run_id: str, tenants: list[str] | None = None
) -> AsyncIterator[str]:
    """Create database ``eventfold_bench_<run_id>``; yield its DSN for ``dsn``'s role; drop it.

    The database is created (and dropped) by the role of
    ``$EVENTFOLD_BENCH_ADMIN_DATABASE_URL`` when set, which then grants ``dsn``'s
    role what the application needs on it (as ``eventfold infra up`` does on the
    main database); else by ``dsn``'s own role. Raises
    :class:`PrivateDatabaseRefused` when neither may create databases: the
    figures of a phase that needs one would count other people's processes, so
    it is not run on the shared database instead. The roles of ``tenants`` (per
    server, created by the application role) are dropped afterwards; the list may
    grow while the block runs.
    """
    name = f"eventfold_bench_{run_id}"
    admin_dsn = os.environ.get(ADMIN_URL_VARIABLE) or dsn
    app_role = urlsplit(dsn).username or ""
    admin = await asyncpg.connect(admin_dsn)
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PrivateDatabaseRefused(
                f"this phase needs a database of its own and {exc}: set {ADMIN_URL_VARIABLE}"
                " to a role with CREATEDB (or grant the application role CREATEDB for the run)"
            ) from exc
        if admin_dsn != dsn and app_role:
            await admin.execute(
                f'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "{name}" TO "{app_role}"'
            )
    finally:
        await admin.close()
    try:
        yield with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        app = await asyncpg.connect(dsn)
        try:
            for tenant in tenants or []:
                await app.execute(f"DROP ROLE IF EXISTS {tenant_role(tenant)}")
        finally:
            await app.close()
