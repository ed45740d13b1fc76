"""Projection of ``apikey.created`` and ``apikey.revoked`` into ``eventfold.api_keys``.

A platform table (not the tenant's schema): a request names its key before
anyone knows its tenant, and the key id is unique across tenants. Each change
NOTIFYs :data:`eventfold.apikeys.APIKEY_CHANNEL` with the key id inside the
batch transaction, so every API process drops its cached copy on commit
(revocation reaches every instance within a second). Inside a rebuild the
handlers write the shadow's copy of the table (:mod:`.platform`) and notify
no one: the swap does, for the rows it changes.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import ValidationError

from eventfold.apikeys import APIKEY_CHANNEL
from eventfold.envelope import CloudEvent
from eventfold.events.apikey import ApiKeyCreated, ApiKeyRevoked
from eventfold.fold import APPLIED, Outcome
from eventfold.projection import platform
from eventfold.readmodel import Target


async def key_created(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Register the key (its hash only); a second key with the same id is rejected."""
    tenant = target.tenant
    try:
        data = ApiKeyCreated.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid apikey.created data: {exc.error_count()} errors")
    inserted = await conn.fetchval(
        f"INSERT INTO {platform.table(target, 'api_keys')}"
        " (id, tenant, name, roles, secret_hash, created_at, event_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING true",
        data.id,
        tenant,
        data.name,
        list(data.roles),
        data.secret_hash,
        at,
        ev.id,
    )
    if not inserted:
        return Outcome("rejected", f"API key {data.id} exists already")
    if not target.shadow:
        # A process may remember this id as unknown (a request that came too early).
        await conn.execute("SELECT pg_notify($1, $2)", APIKEY_CHANNEL, data.id)
    return APPLIED


async def key_revoked(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Mark the tenant's key revoked (once; the first revocation's time stays)."""
    tenant = target.tenant
    try:
        data = ApiKeyRevoked.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid apikey.revoked data: {exc.error_count()} errors")
    revoked = await conn.fetchval(
        f"UPDATE {platform.table(target, 'api_keys')} SET revoked_at = $3"
        " WHERE id = $1 AND tenant = $2 AND revoked_at IS NULL RETURNING true",
        data.id,
        tenant,
        at,
    )
    if not revoked:
        return Outcome("rejected", f"no unrevoked API key {data.id} in tenant {tenant}")
    if not target.shadow:
        await conn.execute("SELECT pg_notify($1, $2)", APIKEY_CHANNEL, data.id)
    return APPLIED
