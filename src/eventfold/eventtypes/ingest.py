"""Admitting an event of a tenant type at the gateway, and folding it in the projector.

The gateway validates ``data`` against the version the event's ``dataschema``
names, or the latest, and stamps two attributes the fold relies on:
``dataschema`` (the version ``data`` follows) and the extension
:data:`FOLD_VERSION` (the type's latest version when the event was accepted).
The projector lifts ``data`` to that version and folds it with that version's
projection, so a replay folds every event as it was folded live, whatever
versions were registered since. A projected event's ``subject`` is its record
(``{collection}/{id}``): it shares the record's partition, hence its order.
"""

from __future__ import annotations

from typing import Any

from eventfold.envelope import CloudEvent, EnvelopeInvalid
from eventfold.errors import FieldError
from eventfold.eventtypes import names, schemas
from eventfold.eventtypes.definitions import FOLD_VERSION, TypeHistory, data_version
from eventfold.eventtypes.projection import ProjectionFailed, RecordOperation, record_operation

__all__ = ["FOLD_VERSION", "admission", "admit", "fold_version", "operation", "unregistered"]


def unregistered(type_name: str, tenant: str, path: str) -> EnvelopeInvalid:
    """The 422 for an event of a custom type the tenant has not registered."""
    route = names.REGISTRATION_ROUTE.format(tenant=tenant)
    return EnvelopeInvalid(
        [FieldError(f"{path}/type", f"{type_name} is not a registered event type; register it "
                    f"with {route}")]
    )  # fmt: skip


def admit(event: CloudEvent, history: TypeHistory, tenant: str, *, path: str = "") -> CloudEvent:
    """``event`` validated against its version and stamped for the fold; raises
    :class:`EnvelopeInvalid` (pointers under ``path``) when it does not fit."""
    return event.model_copy(update=admission(event, history, tenant, path=path))


def admission(
    event: CloudEvent, history: TypeHistory, tenant: str, *, path: str = ""
) -> dict[str, Any]:
    """The attributes :func:`admit` sets on ``event`` (``dataschema``, :data:`FOLD_VERSION`,
    ``subject`` when projected), for the gateway to set in the copy it stamps anyway."""
    latest = history.latest
    version = latest
    if event.dataschema is not None:
        try:
            version = names.dataschema_version(event.dataschema, event.type, tenant)
        except ValueError as exc:
            raise EnvelopeInvalid([FieldError(f"{path}/dataschema", str(exc))]) from None
        if version not in history.versions:
            raise EnvelopeInvalid(
                [FieldError(f"{path}/dataschema", f"{event.type} has no version {version} "
                            f"(latest: {latest})")]
            )  # fmt: skip
    errors = schemas.validate(history.versions[version].validator, event.data, path=f"{path}/data")
    if errors:
        raise EnvelopeInvalid(errors)
    updates: dict[str, Any] = {
        "dataschema": names.schema_uri(tenant, event.type, version),
        FOLD_VERSION: latest,
    }
    projection = history.versions[latest].projection
    if projection is not None:
        try:
            op = record_operation(
                projection, history.upcast(event.data, version, latest), path=f"{path}/data"
            )
        except ProjectionFailed as exc:
            raise EnvelopeInvalid([exc.error]) from None
        if event.subject is None:
            updates["subject"] = op.subject
        elif event.subject != op.subject:
            raise EnvelopeInvalid(
                [FieldError(f"{path}/subject", f"must be {op.subject} (the record this type "
                            "projects into) or absent")]
            )  # fmt: skip
    return updates


def fold_version(event: CloudEvent, tenant: str) -> int:
    """The version ``event`` is folded as (stamped by the gateway; else its data's)."""
    stamped = (event.model_extra or {}).get(FOLD_VERSION)
    if isinstance(stamped, int) and not isinstance(stamped, bool) and stamped >= 1:
        return stamped
    return data_version({"type": event.type, "dataschema": event.dataschema}, tenant)


def operation(event: CloudEvent, history: TypeHistory, tenant: str) -> RecordOperation | None:
    """The record operation ``event`` folds as (None: its type projects nothing).

    Raises :class:`ProjectionFailed` when its data does not give a record id.
    """
    target = fold_version(event, tenant)
    projection = history.versions[target].projection
    if projection is None:
        return None
    version = data_version({"type": event.type, "dataschema": event.dataschema}, tenant)
    data = history.upcast(event.data, min(version, target), target)
    return record_operation(projection, data)
