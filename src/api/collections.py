"""``GET /v1/tenants/{t}/collections`` (reader): the tenant's collections, by name.

A collection exists while it holds at least one live record. The names come
from a skip scan of the records' primary key (one index probe per collection),
so listing them costs the number of collections, not of records.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from eventfold import readmodel
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
from eventfold.tenancy import tenant_connection
from eventfold.web import after_cursor, authorize_tenant, json_response, query_int

_PATH = "/v1/tenants/{tenant}/collections"
_KIND = "collections"


class CollectionOut(BaseModel):
    """One collection of records."""

    name: str


class CollectionPage(BaseModel):
    """A page of collections, by name."""

    items: list[CollectionOut]
    next: str | None


register(
    Operation(
        "GET", _PATH, "List the tenant's collections (reader)", "records",
        description="Collections holding at least one record, by name.",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of collections", CollectionPage),),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get(_PATH, list_collections)


async def list_collections(request: web.Request) -> web.Response:
    """``{"items": [{"name"}], "next"}``."""
    _, tenant = await authorize_tenant(request, "reader")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, _KIND, "")
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        names = await readmodel.list_collections(conn, tenant.id, after, limit + 1)
    page = [{"name": name} for name in names[:limit]]
    nxt = request.app[CURSORS].encode(_KIND, page[-1]["name"]) if len(names) > limit else None
    return json_response({"items": page, "next": nxt})
