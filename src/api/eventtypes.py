"""Tenant event type reads (reader): the types, one type, one version.

``GET /v1/tenants/{t}/event-types`` lists the tenant's types by name (a
CONTRACT.md list: ``items``/``next``, ``limit``/``after``), each with its latest
version; ``GET …/event-types/{type}`` is one type with its latest schema and
the list of its versions; ``GET …/event-types/{type}/versions/{n}`` is one
version whole (schema, compatibility, projection, upcast): the document an
event's ``dataschema`` names. Read from ``eventfold.event_types`` through
:mod:`eventfold.eventtypes.definitions` (filtered by the path's tenant), after
the consistency wait, never from a cache.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import CURSORS, EVENT_TYPES, PLACEMENT
from eventfold.errors import NotFound
from eventfold.eventtypes import definitions, names
from eventfold.eventtypes.definitions import TypeHistory
from eventfold.openapi import (
    AFTER,
    CONSISTENCY,
    LIMIT,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Param,
    Reply,
    register,
)
from eventfold.web import after_cursor, authorize_tenant, json_response, query_int

_TYPES = "/v1/tenants/{tenant}/event-types"
_KIND = "event-types"
_TYPE = Param("type", "path", {"type": "string", "pattern": names.TYPE_NAME_RULE}, "type name")
_VERSION = Param("n", "path", {"type": "integer", "minimum": 1}, "version number")


class TypeSummary(BaseModel):
    """One type as listed."""

    type: str
    latest_version: int
    compatibility: str
    projected: bool = Field(description="whether its latest version folds into records")
    created_at: datetime = Field(description="when version 1 was registered")
    updated_at: datetime = Field(description="when the latest version was registered")


class TypePage(BaseModel):
    """A page of event types, by name."""

    items: list[TypeSummary]
    next: str | None


class VersionSummary(BaseModel):
    """One version in a type's list."""

    version: int
    created_at: datetime


class TypeOut(BaseModel):
    """One type: its latest version in full and every version's number."""

    type: str
    latest_version: int
    compatibility: str
    schema_: Any = Field(alias="schema", description="the latest version's JSON Schema")
    projection: Any = Field(description="the latest version's projection, or null")
    created_at: datetime
    updated_at: datetime
    versions: list[VersionSummary]


class VersionOut(BaseModel):
    """One version whole."""

    type: str
    version: int
    schema_: Any = Field(alias="schema", description="JSON Schema 2020-12 of `data`")
    compatibility: str
    projection: Any = Field(description="how its events fold into a record, or null")
    upcast: list[Any] = Field(description="how data of the version before is lifted")
    created_at: datetime


def setup(app: web.Application) -> None:
    """Register the event type read routes."""
    app.router.add_get(_TYPES, list_types)
    app.router.add_get(_TYPES + "/{type}", get_type)
    app.router.add_get(_TYPES + "/{type}/versions/{n}", get_version)


register(
    Operation(
        "GET", _TYPES, "List the tenant's event types", "event-types",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of event types, by name", TypePage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _TYPES + "/{type}", "One event type: its latest version and versions",
        "event-types",
        params=(TENANT, _TYPE, CONSISTENCY),
        replies=(Reply(200, "the type", TypeOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _TYPES + "/{type}/versions/{n}", "One version of an event type (a `dataschema`)",
        "event-types",
        params=(TENANT, _TYPE, _VERSION, CONSISTENCY),
        replies=(Reply(200, "the version", VersionOut),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


async def list_types(request: web.Request) -> web.Response:
    """``{"items": [{"type", "latest_version", "compatibility", "projected", …}], "next"}``."""
    _, tenant = await authorize_tenant(request, "reader")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, _KIND, "")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        rows = await definitions.latest_versions(conn, tenant.id, after, limit + 1)
    page = [
        {
            "type": r["type"],
            "latest_version": r["version"],
            "compatibility": r["compatibility"],
            "projected": r["projected"],
            "created_at": (r["created_at"] or r["updated_at"]).isoformat(),
            "updated_at": r["updated_at"].isoformat(),
        }
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    next_cursor = request.app[CURSORS].encode(_KIND, page[-1]["type"]) if more else None
    return json_response({"items": page, "next": next_cursor})


async def _history(request: web.Request) -> tuple[str, TypeHistory]:
    _, tenant = await authorize_tenant(request, "reader")
    name = request.match_info["type"]
    history = None
    if names.is_custom(name):
        history = await request.app[EVENT_TYPES].history(tenant.id, name, fresh=True)
    if history is None:
        raise NotFound(f"no event type {name[:128]} in tenant {tenant.id}")
    return tenant.id, history


async def get_type(request: web.Request) -> web.Response:
    """One type: the latest version's schema and projection, and every version."""
    _, history = await _history(request)
    latest = history.versions[history.latest].as_dict()
    first = history.versions[1]
    return json_response(
        {
            "type": history.type,
            "latest_version": history.latest,
            "compatibility": latest["compatibility"],
            "schema": latest["schema"],
            "projection": latest["projection"],
            "created_at": first.created_at.isoformat(),
            "updated_at": latest["created_at"],
            "versions": [
                {"version": v.version, "created_at": v.created_at.isoformat()}
                for v in history.versions.values()
            ],
        }
    )


async def get_version(request: web.Request) -> web.Response:
    """One version whole: what a ``dataschema`` of the type names."""
    _, history = await _history(request)
    raw = request.match_info["n"]
    number = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0
    version = history.versions.get(number)
    if version is None:
        raise NotFound(f"{history.type} has no version {raw[:16]} (latest: {history.latest})")
    return json_response(version.as_dict())
