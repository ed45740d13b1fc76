"""Pydantic models of the read API's answers: what ``/openapi.json`` promises clients.

The handlers build their answers as plain dicts (orjson on the hot path); these
models describe those dicts for the OpenAPI document, and the Schemathesis run
(tests/integration/test_schemathesis.py) checks every answer against them. The
problem document is :class:`eventfold.openapi.ProblemOut`, the health report
:class:`eventfold.health.HealthOut`, the gateway's answers are in
:mod:`producers.models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eventfold.events.tenant import TenantLimits


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(title="Tenant")

    id: str
    name: str
    status: Literal["active", "suspended", "deleted"]
    limits: TenantLimits | dict[str, Any]
    created_at: datetime
    personal_collections: list[str] = Field(
        default_factory=list,
        description="collections whose events' data is encrypted with a key per record",
    )
    reason: str | None = Field(default=None, description="why it is suspended (only then)")


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
