"""``GET /v1/tenants/{t}/api-keys`` (admin): the tenant's keys, never a key or its hash.

Keys live in the platform table ``eventfold.api_keys`` (a request names its key
before its tenant is known), read here as the login role and always filtered
by the path's tenant; the id is the keyset position of the pages.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.apikeys import stored_key
from eventfold.appkeys import CURSORS, PLACEMENT
from eventfold.openapi import (
    AFTER,
    CONSISTENCY,
    LIMIT,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Reply,
    register,
)
from eventfold.web import after_cursor, authorize_tenant, json_response, query_int

_KIND = "api-keys"


class ApiKeyOut(BaseModel):
    """One API key as listed: never the key, never its hash."""

    id: str
    name: str
    roles: list[str]
    created_at: datetime
    revoked_at: datetime | None = Field(description="null while the key works")


class ApiKeyPage(BaseModel):
    """A page of API keys, by id."""

    items: list[ApiKeyOut]
    next: str | None


register(
    Operation(
        "GET", "/v1/tenants/{tenant}/api-keys", "List API keys (admin), without the keys",
        "api-keys",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of API keys, revoked ones included", ApiKeyPage),),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the API key read route."""
    app.router.add_get("/v1/tenants/{tenant}/api-keys", list_api_keys)


async def list_api_keys(request: web.Request) -> web.Response:
    """``{"items": [{"id", "name", "roles", "created_at", "revoked_at"}], "next"}``."""
    _, tenant = await authorize_tenant(request, "admin")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, _KIND, "")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        rows = await conn.fetch(
            "SELECT id, tenant, name, roles, secret_hash, created_at, revoked_at"
            " FROM eventfold.api_keys WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
            tenant.id,
            after,
            limit + 1,
        )
    page = [stored_key(r) for r in rows[:limit]]
    next_cursor = request.app[CURSORS].encode(_KIND, page[-1].id) if len(rows) > limit else None
    return json_response({"items": [k.as_dict() for k in page], "next": next_cursor})
