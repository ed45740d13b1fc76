"""``GET /v1/tenants/{t}/hot-keys`` (admin): the tenant's most read records, hottest first.

Scores are read counts that halve every few minutes (see :mod:`eventfold.cache`),
summed over every API process; this process's counts not yet flushed are
flushed first. The list is a top-N snapshot, so it has one page: ``next`` is
always null.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import CACHE
from eventfold.cache import HOT_STORED
from eventfold.openapi import TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.web import authorize_tenant, json_response, query_int

DEFAULT_LIMIT = 20


class HotKeyOut(BaseModel):
    """One hot record."""

    collection: str
    id: str
    score: float = Field(description="decayed read count (half-life about 5 minutes)")


class HotKeysPage(BaseModel):
    """The hottest records of a tenant, hottest first; one page only."""

    items: list[HotKeyOut]
    next: None = None


def setup(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get("/v1/tenants/{tenant}/hot-keys", list_hot_keys)


async def list_hot_keys(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{t}/hot-keys?limit=``: 503 while Redis is unavailable."""
    _, tenant = await authorize_tenant(request, "admin")
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, HOT_STORED)
    top = await request.app[CACHE].top(tenant.id, limit)
    items = [{"collection": c, "id": i, "score": s} for c, i, s in top]
    return json_response({"items": items, "next": None})


register(
    Operation(
        "GET",
        "/v1/tenants/{tenant}/hot-keys",
        "The tenant's most read records (admin)",
        "operations",
        params=(
            TENANT,
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": HOT_STORED, "default": DEFAULT_LIMIT},
            ),
        ),
        replies=(Reply(200, "the hottest records, hottest first (one page)", HotKeysPage),),
        errors=TENANT_ERRORS,
        description="Feeds cache warming; scores are decayed read counts across API processes.",
    )
)
