"""Pydantic models of the HTTP answers: what ``/openapi.json`` promises clients.

The handlers build their answers as plain dicts (orjson on the hot path); these
models describe those dicts for the OpenAPI document, and the Schemathesis run
(tests/integration/test_schemathesis.py) checks every answer against them.
Request bodies are described by the models the code validates with
(:class:`eventfold.envelope.CloudEvent`, :class:`eventfold.events.tenant.TenantCreated`,
:class:`producers.bodies.CreateRecordBody`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eventfold.events.tenant import TenantLimits

_READ_YOUR_WRITE = "Pass it back as `X-Consistency-Token` to read this write."


class FieldErrorOut(BaseModel):
    """One validation failure: a JSON pointer into the input and what is wrong there."""

    path: str
    message: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(title="Problem")

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    errors: list[FieldErrorOut] | None = None


class TenantAccepted(BaseModel):
    """``POST /v1/tenants`` accepted: the ``tenant.created`` event id."""

    event_id: str
    consistency_token: str = Field(description=_READ_YOUR_WRITE)


class PublishedEventOut(BaseModel):
    """Where one event landed in the log (``duplicate`` when it was there already)."""

    id: str
    partition: int | None
    offset: int | None
    duplicate: bool


class EventsAccepted(BaseModel):
    """``POST …/events`` accepted: one item per event, in request order."""

    events: list[PublishedEventOut]
    consistency_token: str = Field(description=_READ_YOUR_WRITE)


class CommandAccepted(BaseModel):
    """A record command accepted: the record id and the event that carries it."""

    id: str
    event_id: str
    consistency_token: str = Field(description=_READ_YOUR_WRITE)


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(title="Tenant")

    id: str
    name: str
    status: str
    limits: TenantLimits | dict[str, Any]
    created_at: datetime


class RecordOut(BaseModel):
    """A record: its current document and version (also its ``ETag``)."""

    model_config = ConfigDict(title="Record")

    id: str
    collection: str
    version: int = Field(ge=1)
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class RecordPage(BaseModel):
    """One page of records; ``next`` is the cursor of the following page, or null."""

    items: list[RecordOut]
    next: str | None


class EventOut(BaseModel):
    """An event of the tenant's history: its CloudEvents envelope plus its status."""

    model_config = ConfigDict(title="HistoryEvent", extra="allow")

    specversion: str
    id: str
    source: str
    type: str
    status: Literal["pending", "applied", "rejected"]
    reason: str | None = Field(default=None, description="why it was rejected")


class EventPage(BaseModel):
    """One page of the event history, oldest first (newest first with ``order=-seq``)."""

    items: list[EventOut]
    next: str | None


class CheckOut(BaseModel):
    """One dependency's state."""

    status: Literal["ok", "down"]
    error: str | None = None


class HealthOut(BaseModel):
    """The process's state: ``down`` when a critical dependency is."""

    model_config = ConfigDict(title="Health")

    status: Literal["ok", "degraded", "down"]
    checks: dict[str, CheckOut]
