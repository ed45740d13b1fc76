"""The application's PostgreSQL role is no superuser, and Eventfold works with it.

Runs on a PRIVATE PostgreSQL cluster (another port, data in a temporary folder)
set up by the local stack's own code, never on the shared one, whose roles are
not ours to change.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from devstack.postgres import BIN, Postgres
from devstack.process import live_pid, run, stop
from eventfold import readmodel
from eventfold.clients import open_pool
from eventfold.ids import tenant_schema
from eventfold.settings import Settings
from eventfold.tenancy import tenant_connection, tenant_lock
from tests.conftest import free_port, new_tenant_id

pytestmark = pytest.mark.integration

ROLE = "eventfold_app"


def _quiet(_line: str) -> None:
    """Infra progress lines are noise in a test log."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster() -> AsyncIterator[Postgres]:
    """A private cluster brought up by `infra up`'s code: initdb, start, role and database."""
    home = Path(tempfile.mkdtemp(prefix="eventfold-pgrole-"))
    url = f"postgresql://{ROLE}:app-pw@127.0.0.1:{free_port()}/eventfold_app"
    pg = Postgres(Settings(home=home, mode="dev", database_url=url))
    try:
        pid = await pg.start(_quiet)
        await pg.ready(pid, _quiet)
        yield pg
    finally:
        pid = live_pid(pg.pid_path, pg.markers)
        if pid is not None:
            await stop(pid, sig=pg.stop_signal, grace=pg.stop_timeout)
        shutil.rmtree(home, ignore_errors=True)


async def _as_admin(pg: Postgres, sql: str) -> None:
    await run(
        [
            *(str(BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir)),
            *("-p", str(pg.port), "-U", pg.admin, "-d", "postgres", "-c", sql),
        ],
        what="psql as the cluster's superuser",
        user=pg.os_user,
    )


async def _attributes(pg: Postgres) -> dict[str, object]:
    conn = await asyncpg.connect(pg.settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,"
            " r.rolreplication, d.datdba = r.oid AS owns_database,"
            " has_database_privilege(r.oid, d.oid, 'CREATE') AS can_create"
            " FROM pg_roles r, pg_database d"
            " WHERE r.rolname = current_user AND d.datname = current_database()"
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


EXPECTED = {
    "rolsuper": False,
    "rolcreaterole": True,
    "rolcreatedb": False,
    "rolbypassrls": False,
    "rolreplication": False,
    "owns_database": False,
    "can_create": True,
}


async def test_the_application_role_has_only_what_it_needs(cluster: Postgres) -> None:
    assert await _attributes(cluster) == EXPECTED


async def test_a_superuser_role_of_an_older_stack_is_demoted(cluster: Postgres) -> None:
    await _as_admin(cluster, f"ALTER ROLE {ROLE} SUPERUSER CREATEDB")
    await cluster.ready(live_pid(cluster.pid_path, cluster.markers), _quiet)
    assert await _attributes(cluster) == EXPECTED


async def test_eventfold_creates_and_reads_tenants_as_that_role(cluster: Postgres) -> None:
    assert (await _attributes(cluster))["rolsuper"] is False  # what this test is about
    pool = await open_pool(cluster.settings, attempts=1)  # the platform schema and its migration
    try:
        tenant = new_tenant_id()
        async with pool.acquire() as conn, conn.transaction():
            await tenant_lock(conn, tenant)
            await readmodel.create_tenant(
                conn,
                tenant=tenant,
                schema=readmodel.schema_of(tenant),
                name="Role test",
                limits={},
                created_at=datetime.now(UTC),
                event_id=f"tenant.created:{tenant}",
            )
        async with tenant_connection(pool, tenant) as conn:
            schema = tenant_schema(tenant)
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.records") == 0
            assert await conn.fetchval("SELECT current_user") == f"ef_t_{tenant}"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT count(*) FROM eventfold.tenants")
    finally:
        await pool.close()
