"""Declarative projections: how an event of a tenant type folds into a record.

``{"collection", "id": "<pointer into data>", "op": "upsert|patch|delete",
"fields": {"<record field>": "<pointer into data>" | {"const": <value>}}}``
turns an event into the record operation it stands for (``record.upserted``,
``record.patched`` or ``record.deleted`` of ``{collection}/{id}``), which the
projector then folds exactly as it folds a record event: same versions, same
conditions (``expectedversion``), same order (the gateway makes the record the
event's subject, so it shares the record's partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from eventfold.errors import FieldError
from eventfold.eventtypes.pointers import MISSING, get, parse
from eventfold.ids import is_valid

OP_TYPES = {"upsert": "record.upserted", "patch": "record.patched", "delete": "record.deleted"}
#: The most fields one projection maps.
MAX_FIELDS = 100


class Const(BaseModel):
    """A fixed value for a record field (``{"const": "paid"}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    const: Any


class Projection(BaseModel):
    """Where an event of the type goes: one record of ``collection``, by ``id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    id: str = Field(max_length=512, description="JSON pointer into data: the record id")
    op: Literal["upsert", "patch", "delete"] = "upsert"
    fields: dict[str, str | Const] | None = Field(default=None, max_length=MAX_FIELDS)

    @field_validator("id")
    @classmethod
    def _id_pointer(cls, value: str) -> str:
        if not parse(value):
            raise ValueError("must point inside data, e.g. /invoice_id")
        return value

    @field_validator("fields")
    @classmethod
    def _field_pointers(cls, value: dict[str, str | Const] | None) -> dict[str, str | Const] | None:
        for name, source in (value or {}).items():
            if not 0 < len(name) <= 256:
                raise ValueError("a record field name has 1 to 256 characters")
            if isinstance(source, str):
                parse(source)
        return value


@dataclass(frozen=True, slots=True)
class RecordOperation:
    """The record event an event of a projected type stands for."""

    event_type: str
    collection: str
    record_id: str
    data: dict[str, Any] | None

    @property
    def subject(self) -> str:
        """``{collection}/{id}``, the subject (and ordering key) of the record."""
        return f"{self.collection}/{self.record_id}"


class ProjectionFailed(ValueError):
    """The event's data does not give what the projection needs; ``error`` says where."""

    def __init__(self, error: FieldError) -> None:
        super().__init__(f"{error.path}: {error.message}")
        self.error = error


def record_operation(projection: Projection, data: Any, *, path: str = "/data") -> RecordOperation:
    """The record operation ``data`` (of the projection's version) stands for.

    Raises :class:`ProjectionFailed` (a pointer under ``path``) when the record
    id is missing or not a valid record id.
    """
    raw_id = get(data, parse(projection.id))
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise ProjectionFailed(
            FieldError(path + projection.id, "the projection's record id: a string or integer")
        )
    record_id = str(raw_id)
    if not is_valid("id", record_id):
        raise ProjectionFailed(
            FieldError(path + projection.id, "not a valid record id (^[A-Za-z0-9._~:-]{1,128}$)")
        )
    if projection.op == "delete":
        return RecordOperation(OP_TYPES["delete"], projection.collection, record_id, None)
    if projection.fields is None:
        body = dict(data) if isinstance(data, dict) else {}
    else:
        body = {}
        for name, source in projection.fields.items():
            value = source.const if isinstance(source, Const) else get(data, parse(source))
            if value is not MISSING:
                body[name] = value
    return RecordOperation(OP_TYPES[projection.op], projection.collection, record_id, body)
