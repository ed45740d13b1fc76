"""Tenants and callers: ``GET /v1/tenants/{t}``, ``GET /v1/tenants`` and ``GET /v1/me``.

``GET /v1/tenants`` (platform-admin) lists every tenant by id, so an operator
(and the console) can pick one. ``GET /v1/me`` tells any valid credentials who
they are (subject, tenant, roles): an API key does not name its tenant, and a
client should not have to decode a token to learn its own.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from api import models
from eventfold.appkeys import CURSORS, PLACEMENT
from eventfold.auth import ROLES
from eventfold.openapi import (
    AFTER,
    AUTH_ERRORS,
    CONSISTENCY,
    LIMIT,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Reply,
    register,
)
from eventfold.tenancy import TENANT_COLUMNS, Tenant
from eventfold.web import after_cursor, authenticate, authorize_tenant, json_response, query_int

_KIND = "tenants"


class TenantPage(BaseModel):
    """A page of tenants, by id."""

    items: list[models.TenantOut]
    next: str | None


class MeOut(BaseModel):
    """Who the request's credentials are."""

    subject: str = Field(description="the token's `sub`, or `apikey:<id>`")
    tenant: str = Field(description="a tenant id, or `*` for platform admins")
    roles: list[str] = Field(description=f"granted roles, of {', '.join(ROLES)}")
    platform_admin: bool


register(
    Operation(
        "GET", "/v1/tenants/{tenant}", "A tenant", "tenants",
        params=(TENANT, CONSISTENCY),
        replies=(Reply(200, "the tenant", models.TenantOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", "/v1/tenants", "List tenants (platform-admin)", "tenants",
        params=(LIMIT, AFTER),
        replies=(Reply(200, "a page of tenants, by id", TenantPage),),
        errors=(*AUTH_ERRORS, 422),
    ),
    Operation(
        "GET", "/v1/me", "Who these credentials are (any role)", "tenants",
        description="The subject, tenant and roles of the bearer token or API key sent: "
        "what a client (the console) needs to open the right tenant.",
        replies=(Reply(200, "the caller", MeOut),),
        errors=AUTH_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the tenant and caller reads."""
    app.router.add_get("/v1/tenants", list_tenants)
    app.router.add_get("/v1/tenants/{tenant}", get_tenant)
    app.router.add_get("/v1/me", whoami)


async def get_tenant(request: web.Request) -> web.Response:
    """The tenant's id, name, status, limits and creation time (reader)."""
    _, tenant = await authorize_tenant(request, "reader", deleted_ok=True)
    return json_response(tenant.as_dict())


async def list_tenants(request: web.Request) -> web.Response:
    """``{"items": [tenant, …], "next"}`` by id; each item as ``GET /v1/tenants/{t}``."""
    (await authenticate(request)).require("platform-admin")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, _KIND, "")
    rows: list[asyncpg.Record] = []
    # Every server's first page past the cursor, merged: a tenant's row is on its server.
    for pool in request.app[PLACEMENT].pools.values():
        async with pool.acquire(timeout=5) as conn:
            rows += await conn.fetch(
                f"SELECT {TENANT_COLUMNS} FROM eventfold.tenants"
                " WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                limit + 1,
            )
    rows = sorted(rows, key=lambda r: str(r["id"]))[: limit + 1]
    # The same resource as GET /v1/tenants/{t}, each of them.
    page = [Tenant.from_row(r).as_dict() for r in rows[:limit]]
    nxt = request.app[CURSORS].encode(_KIND, page[-1]["id"]) if len(rows) > limit else None
    return json_response({"items": page, "next": nxt})


async def whoami(request: web.Request) -> web.Response:
    """``{"subject", "tenant", "roles", "platform_admin"}`` of the credentials sent."""
    principal = await authenticate(request)
    return json_response(
        {
            "subject": principal.subject,
            "tenant": principal.tenant,
            "roles": sorted(principal.roles),
            "platform_admin": principal.is_platform_admin,
        },
        headers={"Cache-Control": "no-store"},
    )
