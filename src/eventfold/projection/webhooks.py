"""Projection of ``webhook.created`` and ``webhook.deleted`` into ``eventfold.webhooks``.

A platform table read by the notifier (which serves every tenant). The
endpoint starts at the tenant's current history position: it is notified of
events applied after its subscription, never of older ones. Inside a rebuild
the handlers write the shadow's copy of the table (:mod:`.platform`) and leave
the notifier's position alone.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import ValidationError

from eventfold import readmodel
from eventfold.envelope import CloudEvent
from eventfold.events.webhook import WebhookCreated, WebhookDeleted
from eventfold.fold import APPLIED, Outcome
from eventfold.projection import platform
from eventfold.readmodel import Target


async def webhook_created(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Register the endpoint (secret sealed); a second one with the same id is rejected."""
    tenant = target.tenant
    try:
        data = WebhookCreated.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid webhook.created data: {exc.error_count()} errors")
    last = await readmodel.last_event(conn, target.schema)
    start, anchor = last if last is not None else (0, None)
    inserted = await conn.fetchval(
        f"INSERT INTO {platform.table(target, 'webhooks')} (id, tenant, url, types,"
        " secret_sealed, start_seq, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (id) DO NOTHING RETURNING true",
        data.id,
        tenant,
        data.url,
        list(data.types),
        data.secret_sealed,
        start,
        at,
    )
    if not inserted:
        return Outcome("rejected", f"webhook {data.id} exists already")
    if target.shadow:
        return APPLIED  # the notifier's position is the live history's, not the fold's
    # The notifier's position starts here for a tenant's first endpoint.
    await conn.execute(
        "INSERT INTO eventfold.webhook_positions (tenant, seq, anchor) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant) DO NOTHING",
        tenant,
        start,
        anchor,
    )
    return APPLIED


async def webhook_deleted(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the endpoint deleted; its pending deliveries are dropped by the notifier."""
    tenant = target.tenant
    try:
        data = WebhookDeleted.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid webhook.deleted data: {exc.error_count()} errors")
    deleted = await conn.fetchval(
        f"UPDATE {platform.table(target, 'webhooks')} SET deleted_at = $3"
        " WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL RETURNING true",
        data.id,
        tenant,
        at,
    )
    if not deleted:
        return Outcome("rejected", f"no webhook {data.id} in tenant {tenant}")
    return APPLIED


async def erase_delivery_data(conn: asyncpg.Connection, tenant: str, subject: str) -> None:
    """Drop the ``data`` of the stored bodies of ``subject``'s deliveries (an erasure):
    pending ones go out without it, a redrive of dead ones too."""
    await conn.execute(
        "UPDATE eventfold.webhook_deliveries"
        " SET body = convert_to((convert_from(body, 'UTF8')::jsonb - 'data')::text, 'UTF8')"
        " WHERE tenant = $1 AND subject = $2",
        tenant,
        subject,
    )
