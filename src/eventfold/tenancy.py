"""Tenants: the directory (which exist, with name, status and limits) and their isolation.

Isolation is enforced by PostgreSQL, not only by the code. Each tenant's
projection lives in schema ``"t_<tenant>"`` and has a NOLOGIN role
``"ef_t_<tenant>"`` holding USAGE on that schema and SELECT on its tables, and
nothing else. Reads of a tenant's projection run in a READ ONLY transaction
under that role (:func:`tenant_connection`), so a query built for tenant A can
neither name tenant B's tables nor the platform schema ``eventfold`` nor write.

The platform tables (``eventfold.tenants``, ``eventfold.checkpoints``, …) are
read and written only as the login role; tenant roles have no privilege at all
on schema ``eventfold``, which is why those shared tables need no row-level
security: a tenant role cannot even resolve their names.

What this does not stop: ``SET ROLE`` is checked against the *session* user, so
SQL injected into a read could switch back (``RESET ROLE``/``set_config``).
The defence against injection stays the one in :mod:`eventfold.ids` and bound
parameters; the role guards against a query naming the wrong tenant's tables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

from eventfold.errors import Forbidden
from eventfold.ids import tenant_role, tenant_schema
from eventfold.placement import Placement, pool_of

#: Tenants deleted for good (ids are never used again), in each Redis (cache and state):
#: writers that may lag behind a deletion (the hot-key flush of every API process, the
#: analytics worker) check it in the same atomic step as their write, so a tenant's
#: keys, once purged, are not written again.
DELETED_TENANTS_KEY = "ef:_platform:deleted-tenants"

log = logging.getLogger("eventfold.tenancy")

#: A found tenant is reused this long. A change of its status (suspended, resumed,
#: deleted) evicts it at once in every process that listens for the projector's
#: commits (:meth:`TenantDirectory.forget`, wired to the checkpoint watcher).
_POSITIVE_TTL = 30.0
#: The tenant states: only ``active`` takes writes; ``deleted`` is final.
ACTIVE, SUSPENDED, DELETED = "active", "suspended", "deleted"
#: Methods that read: a suspended tenant still answers them.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


#: The columns of ``eventfold.tenants`` a :class:`Tenant` is made of.
TENANT_COLUMNS = "id, name, status, limits, created_at, status_reason, personal_collections"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A registered tenant as the API shows it."""

    id: str
    name: str
    status: str
    limits: dict[str, Any]
    created_at: datetime
    #: Why it is suspended (None unless it is).
    reason: str | None = None
    #: Collections whose events' data the gateway encrypts (:mod:`eventfold.datakeys`).
    personal_collections: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row: Any) -> Tenant:
        """The tenant of an ``eventfold.tenants`` row (:data:`TENANT_COLUMNS`)."""
        return cls(
            id=row["id"],
            name=row["name"],
            status=row["status"],
            limits=row["limits"],
            created_at=row["created_at"],
            reason=row["status_reason"],
            personal_collections=frozenset(row["personal_collections"]),
        )

    def as_dict(self) -> dict[str, Any]:
        """The tenant resource of ``GET /v1/tenants/{t}``."""
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "limits": self.limits,
            "created_at": self.created_at,
            "personal_collections": sorted(self.personal_collections),
        }
        if self.status == SUSPENDED:
            doc["reason"] = self.reason
        return doc

    def check_method(self, method: str) -> None:
        """Raise 403 for a write (any ``method`` but a read) to a suspended or deleted tenant."""
        if self.status == ACTIVE or (self.status == SUSPENDED and method in _READS):
            return
        if self.status == SUSPENDED:
            raise Forbidden(f"tenant {self.id} is suspended: {self.reason}")
        raise Forbidden(f"tenant {self.id} was deleted")


class TenantDirectory:
    """Looks tenants up in PostgreSQL, keeping found ones in memory for a while."""

    def __init__(self, pool: asyncpg.Pool | Placement) -> None:
        #: One pool, or every server's (a tenant's row is on its server).
        self._pool = pool
        self._cache: dict[str, tuple[float, Tenant]] = {}

    async def get(self, tenant_id: str, *, fresh: bool = False) -> Tenant | None:
        """The tenant, or None when it does not exist (yet)."""
        hit = self._cache.get(tenant_id)
        if hit is not None and not fresh and time.monotonic() - hit[0] < _POSITIVE_TTL:
            return hit[1]
        pool = await pool_of(self._pool, tenant_id)
        async with pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(
                f"SELECT {TENANT_COLUMNS} FROM eventfold.tenants WHERE id = $1", tenant_id
            )
        if row is None:
            self._cache.pop(tenant_id, None)
            return None
        tenant = Tenant.from_row(row)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: a simple reset beats an LRU for this size
        self._cache[tenant_id] = (time.monotonic(), tenant)
        return tenant

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop ``tenant_id`` from memory (every tenant when None): its next lookup reads
        PostgreSQL. Called when a tenant's state changes, or when such news may have
        been missed (the listener reconnected)."""
        if tenant_id is None:
            self._cache.clear()
        else:
            self._cache.pop(tenant_id, None)


#: Seconds to wait for a pooled connection before a read gives up.
ACQUIRE_TIMEOUT = 5.0


def tenant_role_ddl(tenant: str, schema: str | None = None) -> str:
    """The role and grants of one tenant whose ``schema`` exists (idempotent).

    ``schema`` (quoted) is the tenant's live schema by default, or a rebuild's
    shadow of it: grants belong to the schema and its tables, so they follow it
    when the shadow is swapped in. Runs as the login role inside the caller's
    transaction. Concurrent runs for one tenant are serialised by the caller's
    advisory lock (:func:`tenant_lock`); the exception handler covers a process
    that does not take it.
    """
    schema, role = schema or tenant_schema(tenant), tenant_role(tenant)
    name = role.strip('"')  # a validated tenant id: [a-z0-9_] only, safe as a literal
    return f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{name}') THEN
            CREATE ROLE {role} NOLOGIN NOINHERIT;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created by a concurrent transaction
    END
    $$;
    -- Membership lets the login role SET ROLE to it when it is not a superuser.
    GRANT {role} TO CURRENT_USER;
    REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM PUBLIC;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM PUBLIC;
    GRANT USAGE ON SCHEMA {schema} TO {role};
    GRANT SELECT ON {schema}.records, {schema}.events TO {role};
    -- The workflow tables (a schema built before them has none until it is rebuilt).
    DO $$
    DECLARE t text;
    BEGIN
        FOREACH t IN ARRAY ARRAY['workflows', 'workflow_versions', 'runs', 'run_steps'] LOOP
            IF to_regclass(format('%s.%I', '{schema}', t)) IS NOT NULL THEN
                EXECUTE format('GRANT SELECT ON %s.%I TO %s', '{schema}', t, '{role}');
            END IF;
        END LOOP;
    END
    $$;
    """


async def tenant_lock(conn: asyncpg.Connection, tenant: str) -> None:
    """The transaction-level advisory lock the projector takes to create a tenant's schema."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", tenant_schema(tenant))


async def repair_tenant_role(conn: asyncpg.Connection, tenant: str) -> None:
    """Create or complete the role and grants of a tenant whose schema exists."""
    async with conn.transaction():
        await tenant_lock(conn, tenant)
        await conn.execute(tenant_role_ddl(tenant))


#: Registered tenants with a schema whose role is missing, not usable by the login
#: role, or lacks its grants. One catalog query: cheap when nothing is to do.
_NEEDS_REPAIR = """
SELECT t.id
FROM eventfold.tenants t
JOIN pg_catalog.pg_namespace n ON n.nspname = 't_' || t.id
LEFT JOIN pg_catalog.pg_roles r ON r.rolname = 'ef_t_' || t.id
WHERE r.oid IS NULL
   OR NOT pg_has_role(current_user, r.oid, 'MEMBER')
   OR NOT has_schema_privilege(r.oid, n.oid, 'USAGE')
   OR NOT coalesce(has_table_privilege(
          r.oid, to_regclass(format('%I.records', n.nspname)), 'SELECT'), true)
   OR NOT coalesce(has_table_privilege(
          r.oid, to_regclass(format('%I.events', n.nspname)), 'SELECT'), true)
ORDER BY t.id
"""


async def ensure_tenant_roles(pool: asyncpg.Pool) -> list[str]:
    """Give tenants created before roles existed their role and grants; return their ids.

    Idempotent and safe from many processes at once (each tenant is repaired
    under the projector's per-tenant advisory lock). A tenant that cannot be
    repaired is logged and stays unreadable: its reads fail, closed.
    """
    repaired: list[str] = []
    async with pool.acquire(timeout=10) as conn:
        rows = await conn.fetch(_NEEDS_REPAIR)
        for row in rows:
            tenant = row["id"]
            try:
                await repair_tenant_role(conn, tenant)
            except asyncpg.PostgresError:
                log.exception("cannot repair the tenant's role", extra={"tenant": tenant})
            else:
                repaired.append(tenant)
    if repaired:
        log.info("tenant roles repaired", extra={"tenants": len(repaired)})
    return repaired


async def _begin_as(conn: asyncpg.Connection, role: str) -> Transaction:
    tx = conn.transaction(readonly=True)
    await tx.start()
    try:
        await conn.execute(f"SET LOCAL ROLE {role}")
    except BaseException:
        await tx.rollback()
        raise
    return tx


@asynccontextmanager
async def tenant_connection(
    pool: asyncpg.Pool | Placement, tenant: str, *, acquire_timeout: float = ACQUIRE_TIMEOUT
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection in a READ ONLY transaction running as the tenant's role
    (on the tenant's database server when ``pool`` is a :class:`Placement`).

    ``SET LOCAL`` ends with the transaction, so the connection goes back to the
    pool as the login role whatever happens inside. A role that is missing or
    not granted to the login role (a tenant created by an older projector while
    this process runs) is repaired once, then the read goes on.
    """
    role = tenant_role(tenant)
    async with (await pool_of(pool, tenant)).acquire(timeout=acquire_timeout) as conn:
        try:
            tx = await _begin_as(conn, role)
        except (asyncpg.InvalidParameterValueError, asyncpg.InsufficientPrivilegeError):
            # SET ROLE: 22023 when the role does not exist, 42501 when not granted.
            log.warning("tenant role missing, repairing", extra={"tenant": tenant})
            await repair_tenant_role(conn, tenant)
            tx = await _begin_as(conn, role)
        try:
            yield conn
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
