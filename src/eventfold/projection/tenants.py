"""Projection of the tenant lifecycle: ``tenant.updated``, ``suspended``, ``resumed``, ``deleted``.

The tenant's row in ``eventfold.tenants`` is the platform's view of it (the
gateway's and the read API's :class:`~eventfold.tenancy.TenantDirectory`).
Every handler is idempotent: folding an event twice leaves what folding it
once left, so a replay or a redelivery changes nothing. Each change notifies
the processes that cache tenants (:func:`notify_changed`), so a suspension
or a deletion takes effect everywhere at the commit, not a cache lifetime later.

``tenant.deleted`` marks the row deleted (it stays: the id is never reused)
and removes every platform row of the tenant here; the batch then drops the
tenant's schema and role and folds none of its later events
(:func:`forget_tenant`, called by :mod:`eventfold.projection.batch`).

Inside a rebuild's shadow (a verify, a replay) the live row is left alone:
the handlers answer as the live fold did.
"""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg
import orjson
from pydantic import ValidationError

from eventfold import ids, readmodel
from eventfold.db import CHECKPOINT_CHANNEL, TENANT_CHANGED
from eventfold.envelope import CloudEvent
from eventfold.events.tenant import TenantSuspended, TenantUpdated
from eventfold.fold import APPLIED, Outcome
from eventfold.readmodel import Target

log = logging.getLogger("eventfold.projection.tenants")

#: Platform rows of a tenant, removed when it is deleted: (table, key column).
#: Deliveries and attempts hang off webhooks, sync state off integrations.
TENANT_ROWS = (
    ("webhook_attempts", "webhook_id IN (SELECT id FROM eventfold.webhooks WHERE tenant = $1)"),
    ("webhook_deliveries", "tenant = $1"),
    ("webhook_positions", "tenant = $1"),
    ("webhooks", "tenant = $1"),
    (
        "integration_items",
        "integration IN (SELECT id FROM eventfold.integrations WHERE tenant = $1)",
    ),
    ("integrations", "tenant = $1"),
    ("api_keys", "tenant = $1"),
    # Its records' data keys: the tenant's encrypted data in the log and the archive
    # can never be read again.
    ("data_keys", "tenant = $1"),
    ("event_types", "tenant = $1"),
    ("workflow_inbox", "tenant = $1"),
    ("workflow_runs", "tenant = $1"),
    ("parked", "tenant = $1"),
    ("rebuilds", "tenant = $1"),
    ("projection_versions", "tenant = $1"),
)


async def notify_changed(conn: asyncpg.Connection, tenant: str) -> None:
    """Tell every process caching tenants, at this transaction's commit, to read it again."""
    payload = orjson.dumps({TENANT_CHANGED: tenant}).decode()
    await conn.execute("SELECT pg_notify($1, $2)", CHECKPOINT_CHANNEL, payload)


async def _set(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, sql: str, *args: object
) -> Outcome:
    """Run ``sql`` (an UPDATE of the tenant's live row, ``$1`` its id) unless in a shadow."""
    if target.shadow:
        return APPLIED
    changed = await conn.fetchval(sql, target.tenant, *args)
    if not changed:
        return Outcome("rejected", f"tenant {target.tenant} does not exist or was deleted")
    await notify_changed(conn, target.tenant)
    return APPLIED


async def tenant_updated(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Set the name, limits and/or personal collections the event carries."""
    try:
        data = TenantUpdated.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid tenant.updated data: {exc.error_count()} errors")
    return await _set(
        conn,
        target,
        ev,
        "UPDATE eventfold.tenants SET name = coalesce($2, name), limits = coalesce($3, limits),"
        " personal_collections = coalesce($4, personal_collections)"
        " WHERE id = $1 AND status <> 'deleted' RETURNING true",
        data.name,
        None if data.limits is None else data.limits.model_dump(mode="json"),
        None if data.personal_collections is None else sorted(set(data.personal_collections)),
    )


async def tenant_suspended(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the tenant suspended, with the reason its writers are told."""
    try:
        data = TenantSuspended.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid tenant.suspended data: {exc.error_count()} errors")
    return await _set(
        conn,
        target,
        ev,
        "UPDATE eventfold.tenants SET status = 'suspended', status_reason = $2"
        " WHERE id = $1 AND status <> 'deleted' RETURNING true",
        data.reason,
    )


async def tenant_resumed(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the tenant active again (an active one stays so)."""
    return await _set(
        conn,
        target,
        ev,
        "UPDATE eventfold.tenants SET status = 'active', status_reason = NULL"
        " WHERE id = $1 AND status <> 'deleted' RETURNING true",
    )


async def tenant_deleted(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the tenant deleted for good and remove its platform rows (its schema goes
    with the batch: :func:`forget_tenant`)."""
    if target.shadow:
        return APPLIED
    found = await conn.fetchval(
        "UPDATE eventfold.tenants SET status = 'deleted', status_reason = NULL,"
        " deleted_at = coalesce(deleted_at, $2) WHERE id = $1 RETURNING true",
        target.tenant,
        at,
    )
    if not found:
        return Outcome("rejected", f"tenant {target.tenant} does not exist")
    for table, where in TENANT_ROWS:
        await conn.execute(f"DELETE FROM eventfold.{table} WHERE {where}", target.tenant)
    await notify_changed(conn, target.tenant)
    return APPLIED


async def forget_tenant(conn: asyncpg.Connection, tenant: str) -> None:
    """Drop a deleted tenant's schemas (live and any rebuild's) and its role.

    Inside the batch transaction, after its ``tenant.deleted`` is folded. The role
    is dropped in a savepoint: a role PostgreSQL will not drop (a session still
    using it) keeps no privilege once its schema is gone, so the batch goes on.
    """
    await readmodel.drop_schema(conn, readmodel.schema_of(tenant))
    for purpose in ("rebuild", "verify", "old"):
        await readmodel.drop_schema(conn, readmodel.shadow_schema(tenant, purpose))
    try:
        async with conn.transaction():
            await conn.execute(f"DROP ROLE IF EXISTS {ids.tenant_role(tenant)}")
    except asyncpg.PostgresError as exc:
        log.warning("deleted tenant's role kept", extra={"tenant": tenant, "error": repr(exc)})
