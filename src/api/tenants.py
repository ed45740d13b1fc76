"""``GET /v1/tenants/{t}``."""

from __future__ import annotations

from aiohttp import web

from eventfold.web import authorize_tenant, json_response


async def get_tenant(request: web.Request) -> web.Response:
    """The tenant's id, name, status, limits and creation time (reader)."""
    _, tenant = await authorize_tenant(request, "reader")
    return json_response(tenant.as_dict())
