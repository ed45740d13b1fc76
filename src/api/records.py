"""Record reads: one record with ETag/304, and keyset-paginated lists with filters."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from eventfold import ids
from eventfold.cache import CACHE, record_payload
from eventfold.errors import FieldError, NotFound, ValidationFailed
from eventfold.ids import tenant_schema
from eventfold.tenancy import tenant_connection
from eventfold.web import CURSORS, POOL, authorize_tenant, json_response, query_int

ORDERS = {
    "id": ("id", "ASC"),
    "-id": ("id", "DESC"),
    "updated_at": ("updated_at", "ASC"),
    "-updated_at": ("updated_at", "DESC"),
}
_COLUMNS = "id, collection, version, data, created_at, updated_at"


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
        async with tenant_connection(request.app[POOL], tenant.id) as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS}, deleted FROM {tenant_schema(tenant.id)}.records"
                " WHERE collection = $1 AND id = $2",
                collection,
                record_id,
            )
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
    if order not in ORDERS:
        raise ValidationFailed(
            "unknown order", errors=[FieldError("/order", f"one of {', '.join(ORDERS)}")]
        )
    column, direction = ORDERS[order]
    filters = _filters(request)
    # The cursor is bound to this exact listing: another order or filter makes it invalid.
    shape = hashlib.sha256(orjson.dumps([collection, order, filters])).hexdigest()[:16]
    kind = f"records:{shape}"
    params: list[Any] = [collection]
    where = ["collection = $1", "NOT deleted"]
    # data->>field compares the text form, which matches strings, numbers and booleans alike.
    for field, value in filters:
        params += [field, value]
        where.append(f"data->>${len(params) - 1} = ${len(params)}")
    after = request.query.get("after")
    cmp = ">" if direction == "ASC" else "<"
    if after:
        pos = request.app[CURSORS].decode(kind, after)
        if column == "id":
            params.append(_str(pos))
            where.append(f"id {cmp} ${len(params)}")
        else:
            stamp, last_id = _pair(pos)
            params += [stamp, last_id]
            where.append(f"(updated_at, id) {cmp} (${len(params) - 1}, ${len(params)})")
    order_sql = f"id {direction}" if column == "id" else f"updated_at {direction}, id {direction}"
    params.append(limit + 1)
    sql = (
        f"SELECT {_COLUMNS} FROM {tenant_schema(tenant.id)}.records"
        f" WHERE {' AND '.join(where)} ORDER BY {order_sql} LIMIT ${len(params)}"
    )
    async with tenant_connection(request.app[POOL], tenant.id) as conn:
        rows = await conn.fetch(sql, *params)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        position: Any = (
            last["id"] if column == "id" else [last["updated_at"].isoformat(), last["id"]]
        )
        next_cursor = request.app[CURSORS].encode(kind, position)
    return json_response({"items": [_record(r) for r in page], "next": next_cursor})


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
    return value


def _pair(value: Any) -> tuple[datetime, str]:
    try:
        stamp, last_id = value
        return datetime.fromisoformat(stamp), _str(last_id)
    except (TypeError, ValueError):
        raise ValidationFailed(
            "bad cursor", errors=[FieldError("/after", "invalid cursor")]
        ) from None
