"""Record reads: one record with ETag/304, and keyset-paginated lists with filters."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from api import models
from eventfold import ids, readmodel
from eventfold.appkeys import CACHE, CURSORS, PLACEMENT
from eventfold.cache import record_payload
from eventfold.errors import FieldError, NotFound, ValidationFailed
from eventfold.openapi import (
    AFTER,
    COLLECTION,
    CONSISTENCY,
    LIMIT,
    RECORD_ID,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Param,
    Reply,
    register,
)
from eventfold.tenancy import tenant_connection
from eventfold.web import authorize_tenant, json_response, query_int

_RECORDS = "/v1/tenants/{tenant}/collections/{collection}/records"
_ORDER = {"type": "string", "enum": ["id", "-id", "updated_at", "-updated_at"], "default": "id"}

register(
    Operation(
        "GET", _RECORDS, "List records (keyset pagination, filters)", "records",
        params=(
            TENANT, COLLECTION, LIMIT, AFTER,
            Param("order", "query", _ORDER),
            Param(
                "filter", "query",
                {
                    "type": "object",
                    "propertyNames": {"pattern": f"^{ids.FIELD_NAME.pattern}$"},
                    "additionalProperties": {"type": "string"},
                },
                "`filter[FIELD]=VALUE`: records whose top-level `FIELD` equals VALUE "
                "(as a string, a number or a boolean)",
                style="deepObject",
            ),
            CONSISTENCY,
        ),
        replies=(Reply(200, "a page of records", models.RecordPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _RECORDS + "/{id}", "A record", "records",
        params=(TENANT, COLLECTION, RECORD_ID, CONSISTENCY,
                Param("If-None-Match", "header", {"type": "string"}, "a version ETag")),
        replies=(
            Reply(200, "the record", models.RecordOut, headers=("ETag",)),
            Reply(304, "not modified: If-None-Match matches", headers=("ETag",)),
        ),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the record read routes."""
    app.router.add_get(_RECORDS, list_records)
    app.router.add_get(_RECORDS + "/{id}", get_record)


def _record(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "collection": row["collection"],
        "version": row["version"],
        "data": row["data"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _etag_matches(header: str | None, version: int) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/").strip('"') == str(version) for t in tags)


async def get_record(request: web.Request) -> web.Response:
    """``GET …/records/{id}``: 200 with ``ETag``, 304 on a match, 404 when absent or deleted."""
    _, tenant = await authorize_tenant(request, "reader")
    collection = ids.check("collection", request.match_info["collection"])
    record_id = ids.check("id", request.match_info["id"])
    cache = request.app[CACHE]
    # A read carrying a consistency token must reflect that write: the projection
    # has it now, the cache may not yet, so such a read skips the lookup (not the fill).
    cached = None
    if "X-Consistency-Token" not in request.headers:
        cached = await cache.get(tenant.id, collection, record_id)
    if cached is not None:
        version, body = cached.version, cached.body
    else:
        async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
            row = await readmodel.read_record(conn, tenant.id, collection, record_id)
        if row is None:  # never existed: not cached, so its creation shows at once
            raise NotFound(f"no record {collection}/{record_id}")
        version, body = row["version"], record_payload(row)
        await cache.fill(tenant.id, collection, record_id, version, body)
    if body is None:
        raise NotFound(f"no record {collection}/{record_id}")
    cache.track(tenant.id, collection, record_id)  # existing records only: warming reads them
    etag = f'"{version}"'
    if _etag_matches(request.headers.get("If-None-Match"), version):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


def _filters(request: web.Request) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in request.query.items():
        if key.startswith("filter[") and key.endswith("]"):
            field = key[len("filter[") : -1]
            ids.check("field", field, path=f"/{key}")
            if "\x00" in value:  # PostgreSQL text cannot hold it: a 422, not a 500
                raise ValidationFailed(
                    "bad filter", errors=[FieldError(f"/{key}", "may not contain U+0000")]
                )
            out.append((field, value))
    return sorted(out)


async def list_records(request: web.Request) -> web.Response:
    """``GET …/records?limit=&after=&order=&filter[FIELD]=VALUE``: keyset pagination."""
    _, tenant = await authorize_tenant(request, "reader")
    collection = ids.check("collection", request.match_info["collection"])
    limit = query_int(request, "limit", 50, 1, 1000)
    order = request.query.get("order", "id")
    if order not in readmodel.RECORD_ORDERS:
        raise ValidationFailed(
            "unknown order",
            errors=[FieldError("/order", f"one of {', '.join(readmodel.RECORD_ORDERS)}")],
        )
    column = readmodel.RECORD_ORDERS[order][0]
    filters = _filters(request)
    # The cursor is bound to this exact listing: another order or filter makes it invalid.
    shape = hashlib.sha256(orjson.dumps([collection, order, filters])).hexdigest()[:16]
    kind = f"records:{shape}"
    after = request.query.get("after")
    position = request.app[CURSORS].decode(kind, after) if after else None
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        rows = await readmodel.list_records(
            conn, tenant.id, collection, order, filters, position, limit
        )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        key: Any = last["id"] if column == "id" else [last["updated_at"].isoformat(), last["id"]]
        next_cursor = request.app[CURSORS].encode(kind, key)
    return json_response({"items": [_record(r) for r in page], "next": next_cursor})
