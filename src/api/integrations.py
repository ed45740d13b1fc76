"""``GET /v1/tenants/{t}/integrations[/{id}]`` (admin): configuration and sync state.

Never the headers (credentials) nor the webhook secret: those stay sealed in
``eventfold.integrations`` and are opened only by the sync runner (headers)
and the inbound webhook route (secret).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import CURSORS, PLACEMENT
from eventfold.errors import NotFound
from eventfold.events.integration import INTEGRATION_ID_PATTERN
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

_KIND = "integrations"
_BASE = "/v1/tenants/{tenant}/integrations"
_ID = re.compile(INTEGRATION_ID_PATTERN)
_COLUMNS = (
    "id, kind, config, paused, state, cursor, items_synced, last_run_at, last_error, created_at"
)


class IntegrationOut(BaseModel):
    """One integration: its state and configuration, never its credentials."""

    id: str
    kind: str
    state: str = Field(description="ok, backing_off, circuit_open or paused")
    cursor: str | None
    items_synced: int
    last_run_at: datetime | None
    last_error: str | None
    config: dict[str, Any]
    created_at: datetime


class IntegrationPage(BaseModel):
    """A page of integrations, by id."""

    items: list[IntegrationOut]
    next: str | None


register(
    Operation(
        "GET", _BASE, "List integrations (admin)", "integrations",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of integrations", IntegrationPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _BASE + "/{id}", "An integration's sync state (admin)", "integrations",
        params=(TENANT, Param("id", "path", {"type": "string", "pattern": INTEGRATION_ID_PATTERN}),
                CONSISTENCY),
        replies=(Reply(200, "the integration", IntegrationOut),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the integration read routes."""
    app.router.add_get(_BASE, list_integrations)
    app.router.add_get(_BASE + "/{id}", get_integration)


def _out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "state": "paused" if row["paused"] else row["state"],
        "cursor": row["cursor"],
        "items_synced": row["items_synced"],
        "last_run_at": row["last_run_at"],
        "last_error": row["last_error"],
        "config": row["config"],
        "created_at": row["created_at"],
    }


async def get_integration(request: web.Request) -> web.Response:
    """``{"id", "kind", "state", "cursor", "items_synced", "last_run_at", "last_error", …}``."""
    _, tenant = await authorize_tenant(request, "admin")
    integration_id = request.match_info["id"]
    if _ID.fullmatch(integration_id) is None:
        raise NotFound(f"no integration {integration_id[:64]}")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM eventfold.integrations"
            " WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL",
            integration_id,
            tenant.id,
        )
    if row is None:
        raise NotFound(f"no integration {integration_id} in tenant {tenant.id}")
    return json_response(_out(row))


async def list_integrations(request: web.Request) -> web.Response:
    """``{"items": [...], "next"}``, by id."""
    _, tenant = await authorize_tenant(request, "admin")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, _KIND, "")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM eventfold.integrations"
            " WHERE tenant = $1 AND deleted_at IS NULL AND id > $2 ORDER BY id LIMIT $3",
            tenant.id,
            after,
            limit + 1,
        )
    page = rows[:limit]
    next_cursor = request.app[CURSORS].encode(_KIND, page[-1]["id"]) if len(rows) > limit else None
    return json_response({"items": [_out(r) for r in page], "next": next_cursor})
