"""Pydantic models of the gateway's answers: what ``/openapi.json`` promises its clients.

The handlers answer with plain dicts (orjson on the hot path); these models
describe those dicts for the OpenAPI document, and the Schemathesis run
(tests/integration/test_schemathesis.py) checks every answer against them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

_READ_YOUR_WRITE = "Pass it back as `X-Consistency-Token` to read this write."


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
