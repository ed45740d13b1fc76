"""Projection of ``eventtype.*`` into ``eventfold.event_types``, and custom events' records.

A version is accepted in log order: ``eventtype.registered`` for a type the
tenant does not have yet, ``eventtype.version_added`` for the next number of
one it has (two gateways racing for the same number: the first in the log wins,
the other is rejected). Both events of a type share its partition, so their
order is the order they were published in. Inside a rebuild the rows go to the
shadow's copy of the table (:mod:`.platform`).

An event of a tenant type whose version declares a projection folds as the
record event it stands for (:func:`record_operation`), through the same fold
as ``record.*`` events (:mod:`.batch`). The handler is listed in
:data:`.handlers.HANDLERS` for both ``eventtype.*`` types.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import ValidationError

from eventfold.envelope import CloudEvent
from eventfold.events.eventtype import EventTypeVersion
from eventfold.eventtypes import definitions, ingest
from eventfold.eventtypes.projection import ProjectionFailed, RecordOperation
from eventfold.fold import APPLIED, Outcome
from eventfold.projection import platform
from eventfold.readmodel import Target


async def version_added(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """Store the version when it is the type's next one; reject it otherwise."""
    tenant = target.tenant
    try:
        data = EventTypeVersion.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid {ev.type} data: {exc.error_count()} errors")
    raw = ev.data
    assert isinstance(raw, dict)  # validated above
    table = platform.table(target, "event_types")
    latest = await conn.fetchval(
        f"SELECT coalesce(max(version), 0) FROM {table} WHERE tenant = $1 AND type = $2",
        tenant,
        data.type,
    )
    if ev.type == "eventtype.registered" and latest:
        return Outcome("rejected", f"event type {data.type} exists already")
    if ev.type == "eventtype.version_added" and not latest:
        return Outcome("rejected", f"no event type {data.type} to add a version to")
    if data.version != latest + 1:
        return Outcome(
            "rejected", f"{data.type} is at version {latest}: version {data.version} is not next"
        )
    await conn.execute(
        f"INSERT INTO {table} (id, tenant, type, version, schema, compatibility, projection,"
        " upcast, created_at, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        f"{tenant}/{data.type}/{data.version}",
        tenant,
        data.type,
        data.version,
        raw["schema"],
        data.compatibility,
        raw.get("projection"),
        raw.get("upcast") or [],
        at,
        ev.id,
    )
    return APPLIED


async def record_operation(
    conn: asyncpg.Connection, tenant: str, ev: CloudEvent
) -> RecordOperation | Outcome | None:
    """The record operation a custom event folds as; None when its version projects
    nothing (it is kept in the history only); an Outcome when it cannot be folded."""
    target = ingest.fold_version(ev, tenant)
    history = await definitions.history_upto(conn, tenant, ev.type, target)
    if history is None:
        return Outcome("rejected", f"{ev.type} has no version {target} in tenant {tenant}")
    try:
        return ingest.operation(ev, history, tenant)
    except ProjectionFailed as exc:
        return Outcome("rejected", f"projection of {ev.type}: {exc}")
