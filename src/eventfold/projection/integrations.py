"""Projection of ``integration.*`` events into the platform table ``eventfold.integrations``.

Only configuration is written here (sealed secrets included, as the event
carries them); the sync runner owns the state columns (cursor, health, lease).
Inside a rebuild the handlers write the shadow's copy of the table (:mod:`.platform`).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import ValidationError

from eventfold.envelope import CloudEvent
from eventfold.events.integration import (
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationUpdated,
)
from eventfold.fold import APPLIED, Outcome
from eventfold.projection import platform
from eventfold.readmodel import Target


async def integration_created(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Register the integration; a second one with the same id is rejected."""
    tenant = target.tenant
    try:
        data = IntegrationCreated.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid integration.created data: {exc.error_count()} errors")
    inserted = await conn.fetchval(
        f"INSERT INTO {platform.table(target, 'integrations')} (id, tenant, kind, config,"
        " headers_sealed, webhook_secret_sealed, paused, created_at, event_id, state, topic)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " CASE WHEN $7 THEN 'paused' ELSE 'ok' END, $10)"
        " ON CONFLICT (id) DO NOTHING RETURNING true",
        data.id,
        tenant,
        data.kind,
        data.config.model_dump(mode="json"),
        data.headers_sealed,
        data.webhook_secret_sealed,
        data.paused,
        at,
        ev.id,
        target.topic,
    )
    if not inserted:
        return Outcome("rejected", f"integration {data.id} exists already")
    return APPLIED


async def integration_updated(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Replace the configuration / headers / pause flag of a live integration."""
    tenant = target.tenant
    try:
        data = IntegrationUpdated.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid integration.updated data: {exc.error_count()} errors")
    config = data.config.model_dump(mode="json") if data.config is not None else None
    updated = await conn.fetchval(
        f"UPDATE {platform.table(target, 'integrations')} SET"
        " config = COALESCE($3, config),"
        " headers_sealed = CASE WHEN $4::text IS NULL THEN headers_sealed"
        "   WHEN $4 = '' THEN NULL ELSE $4 END,"
        " paused = COALESCE($5, paused),"
        # Resuming clears the failure streak: the operator fixed something.
        " state = CASE WHEN COALESCE($5, paused) THEN 'paused'"
        "   WHEN $5 IS NOT NULL THEN 'ok' ELSE state END,"
        " failures = CASE WHEN $5 = false THEN 0 ELSE failures END,"
        " next_run_at = CASE WHEN $5 = false THEN NULL ELSE next_run_at END"
        " WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL RETURNING true",
        data.id,
        tenant,
        config,
        data.headers_sealed,
        data.paused,
    )
    if not updated:
        return Outcome("rejected", f"no integration {data.id} in tenant {tenant}")
    return APPLIED


async def integration_deleted(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the integration deleted (kept as a tombstone so its id is never reused)."""
    tenant = target.tenant
    try:
        data = IntegrationDeleted.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid integration.deleted data: {exc.error_count()} errors")
    deleted = await conn.fetchval(
        f"UPDATE {platform.table(target, 'integrations')} SET deleted_at = $3"
        " WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL RETURNING true",
        data.id,
        tenant,
        at,
    )
    if not deleted:
        return Outcome("rejected", f"no integration {data.id} in tenant {tenant}")
    return APPLIED
