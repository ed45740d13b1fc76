"""Webhook reads (admin): the tenant's endpoints and each endpoint's delivery log.

``GET /v1/tenants/{t}/webhooks`` lists endpoints (never their secret);
``GET …/webhooks/{id}/deliveries`` lists every attempt, newest first: event id,
attempt number, status code or error, duration and time. Both are CONTRACT.md
lists (``items``/``next``, ``limit``/``after``).
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import CURSORS, PLACEMENT
from eventfold.errors import NotFound
from eventfold.events.webhook import WEBHOOK_ID_PATTERN
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

_HOOKS = "/v1/tenants/{tenant}/webhooks"


class WebhookOut(BaseModel):
    """One endpoint as listed: never its secret."""

    id: str
    url: str
    types: list[str]
    created_at: datetime
    disabled_at: datetime | None = Field(description="set when 410 Gone or failures disabled it")
    disabled_reason: str | None


class WebhookPage(BaseModel):
    """A page of webhook endpoints, by id."""

    items: list[WebhookOut]
    next: str | None


class AttemptOut(BaseModel):
    """One delivery attempt."""

    event_id: str
    attempt: int
    status_code: int | None = Field(description="the endpoint's answer; null on error")
    error: str | None = Field(description="timeout, connection error or refusal")
    duration_ms: float
    at: datetime


class AttemptPage(BaseModel):
    """A page of attempts, newest first."""

    items: list[AttemptOut]
    next: str | None


register(
    Operation(
        "GET", _HOOKS, "List webhook endpoints (admin), without secrets", "webhooks",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of endpoints (deleted ones left out)", WebhookPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _HOOKS + "/{id}/deliveries", "An endpoint's delivery attempts (admin)", "webhooks",
        params=(TENANT, Param("id", "path", {"type": "string", "pattern": WEBHOOK_ID_PATTERN}),
                LIMIT, AFTER),
        replies=(Reply(200, "a page of attempts, newest first", AttemptPage),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the webhook read routes."""
    app.router.add_get(_HOOKS, list_webhooks)
    app.router.add_get(_HOOKS + "/{id}/deliveries", list_deliveries)


async def list_webhooks(request: web.Request) -> web.Response:
    """``{"items": [{"id", "url", "types", "created_at", "disabled_at", ...}], "next"}``."""
    _, tenant = await authorize_tenant(request, "admin")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, "webhooks", "")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        rows = await conn.fetch(
            "SELECT id, url, types, created_at, disabled_at, disabled_reason"
            " FROM eventfold.webhooks WHERE tenant = $1 AND deleted_at IS NULL AND id > $2"
            " ORDER BY id LIMIT $3",
            tenant.id,
            after,
            limit + 1,
        )
    items = [dict(r) for r in rows[:limit]]
    nxt = request.app[CURSORS].encode("webhooks", items[-1]["id"]) if len(rows) > limit else None
    return json_response({"items": items, "next": nxt})


async def list_deliveries(request: web.Request) -> web.Response:
    """``{"items": [{"event_id", "attempt", "status_code", "error", "duration_ms", "at"}]}``."""
    _, tenant = await authorize_tenant(request, "admin")
    hook_id = request.match_info["id"]
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, "webhook-attempts", 2**62)
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        found = await conn.fetchval(
            "SELECT true FROM eventfold.webhooks WHERE id = $1 AND tenant = $2",
            hook_id,
            tenant.id,
        )
        if not found:
            raise NotFound(f"no webhook {hook_id[:64]} in tenant {tenant.id}")
        rows = await conn.fetch(
            "SELECT id, event_id, attempt, status_code, error, duration_ms, at"
            " FROM eventfold.webhook_attempts WHERE webhook_id = $1 AND id < $2"
            " ORDER BY id DESC LIMIT $3",
            hook_id,
            after,
            limit + 1,
        )
    page = rows[:limit]
    items = [{k: v for k, v in r.items() if k != "id"} for r in page]
    nxt = (
        request.app[CURSORS].encode("webhook-attempts", int(page[-1]["id"]))
        if len(rows) > limit
        else None
    )
    return json_response({"items": items, "next": nxt})
