"""``GET /openapi.json``: the OpenAPI 3.1 document of the routes this process serves.

The document is built from a registry of :class:`Operation` entries, one per
method and route template, whose bodies and answers are pydantic models: the
request models are the ones the handlers validate with, so the document cannot
drift from the code. Only routes the running app has are described, so
``eventfold run``, ``serve api`` and ``serve ingest`` each document what they
serve. ``HEAD`` (implied by ``GET``) and CORS preflights are not listed.

The registry is here, below the gateway and the read API; each route module
registers the operations of the routes it adds, at import time. Adding a
route? Register its operation beside it::

    from eventfold.openapi import Operation, Param, Reply, register

    register(Operation(
        "POST", "/v1/tenants/{tenant}/webhooks", "Subscribe a webhook", tag="webhooks",
        body=WebhookBody,                       # the model the handler validates with
        replies=(Reply(202, "accepted", WebhookAccepted),),
        errors=BODY_ERRORS + (409,),            # problem+json answers it can give
        params=(TENANT,),
    ))

``tests/integration/test_openapi.py`` fails while a route of the app has no
entry, and ``tests/integration/test_schemathesis.py`` checks every answer of
the live server against the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from eventfold import ids
from eventfold.web import PROBLEM_JSON, essential

#: Where a component schema is referenced from.
REF = "#/components/schemas/{model}"


class FieldErrorOut(BaseModel):
    """One validation failure: a JSON pointer into the input and what is wrong there."""

    path: str
    message: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(title="Problem")

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    errors: list[FieldErrorOut] | None = None


@dataclass(frozen=True, slots=True)
class Param:
    """One path, query or header parameter."""

    name: str
    where: str  # "path", "query" or "header"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False
    style: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The OpenAPI parameter object."""
        doc: dict[str, Any] = {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "schema": self.schema,
        }
        if self.description:
            doc["description"] = self.description
        if self.style:
            doc["style"] = self.style
            doc["explode"] = True
        return doc


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: its status, and the model (or raw schema) of its body."""

    status: int
    description: str
    model: Any = None
    content_type: str = "application/json"
    schema: dict[str, Any] | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one route template, as the OpenAPI document describes it."""

    method: str
    path: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    #: The type the handler validates the body with (a model, or a union of them).
    body: Any = None
    body_types: tuple[str, ...] = ("application/json",)
    body_required: bool = True
    #: False for the public routes (health, metrics, this document).
    secured: bool = True
    description: str = ""


#: (METHOD, route template) → its operation.
OPERATIONS: dict[tuple[str, str], Operation] = {}


def register(*operations: Operation) -> None:
    """Add operations to the document (a second entry for one route replaces the first)."""
    for op in operations:
        OPERATIONS[(op.method.upper(), op.path)] = op


# Parameters and error sets the operations share.
def _pattern(regex: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{regex}$"}


TENANT = Param(
    "tenant",
    "path",
    {
        **_pattern(ids.TENANT_ID.pattern),
        "minLength": ids.TENANT_ID_LENGTH[0],
        "maxLength": ids.TENANT_ID_LENGTH[1],
    },
    f"tenant id: {ids.TENANT_ID_RULE}",
)
COLLECTION = Param("collection", "path", _pattern(ids.COLLECTION.pattern), "collection name")
RECORD_ID = Param("id", "path", _pattern(ids.RECORD_ID.pattern), "record id")
CONSISTENCY = Param(
    "X-Consistency-Token",
    "header",
    {"type": "string"},
    "a write's consistency_token: the read waits (at most 5 s) until it reflects that write;"
    " a token no write produced (malformed, or past the end of the log) is a 400",
)
IF_MATCH = Param(
    "If-Match",
    "header",
    {"type": "string", "pattern": '^"[0-9]{1,18}"$'},
    "the record version the write expects (its ETag); becomes `expectedversion`",
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "makes a retry of this command the same event",
)
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})
AFTER = Param("after", "query", {"type": "string"}, "the previous page's `next` cursor")

#: Problems any authenticated route may answer.
AUTH_ERRORS = (401, 403, 429, 503)
#: …and a tenant route (bad or unknown tenant, malformed consistency token).
TENANT_ERRORS = (*AUTH_ERRORS, 400, 404, 422)
#: …and a route with a JSON body.
BODY_ERRORS = (*TENANT_ERRORS, 413, 415)

_ERROR_TEXT = {
    400: "malformed JSON or header (a consistency token no write produced)",
    401: "missing, invalid or expired credentials",
    403: "credentials without the role, or for another tenant",
    404: "no such tenant or resource",
    409: "it exists already",
    412: "If-Match can never match",
    413: "the body or batch is over its limit",
    415: "a body type the route does not take",
    422: "schema or identifier violation (`errors` says where)",
    429: "rate limited: the tenant's bucket, its reads waiting for the projection, or too"
    " many failed authentications from this address",
    503: "a dependency is unavailable, the projection did not catch up in time, or the"
    " process is answering its limit of requests (`EVENTFOLD_HTTP_MAX_IN_FLIGHT`)",
}
_ERROR_HEADERS = {
    401: ("WWW-Authenticate",),
    429: ("Retry-After",),
    503: ("Retry-After",),
}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "the request's id (the client's when valid): in logs and events",
        "required": True,
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": 'the record version, e.g. `"3"`',
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "the bearer challenge",
        "required": True,
        "schema": {"type": "string"},
    },
}


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes ``app`` serves (and have an entry)."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for method, template in served_routes(app):
        op = OPERATIONS.get((method, template))
        if op is not None:
            paths.setdefault(template, {})[method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Eventfold",
            "version": "1",
            "description": "Event-driven multi-tenant backend: every write is a CloudEvent on "
            "Kafka, every read is folded from that log. Errors are RFC 9457 problem documents.",
        },
        # No jsonSchemaDialect: OpenAPI 3.1's default (JSON Schema 2020-12 with the OAS
        # vocabulary) is what the models give, and Swagger UI (/docs) supports no other.
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "headers": HEADERS,
        },
    }


def served_routes(app: web.Application) -> list[tuple[str, str]]:
    """(METHOD, template) of every route of ``app`` the document must describe."""
    out: list[tuple[str, str]] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        out.append((route.method, resource.canonical))
    return sorted(set(out))


def undocumented(app: web.Application) -> list[tuple[str, str]]:
    """Routes of ``app`` without an :class:`Operation` (the test wants none)."""
    return [key for key in served_routes(app) if key not in OPERATIONS]


_DOCUMENT = web.AppKey("openapi_document", dict[str, bytes])


def install(app: web.Application) -> None:
    """Serve ``GET /openapi.json`` from ``app`` (call it after every other route is added)."""
    app[_DOCUMENT] = {}
    app.router.add_get("/openapi.json", serve_document)


@essential  # the document stays readable under any load
async def serve_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``: built once per app (its routes are frozen once it runs)."""
    cache = request.app[_DOCUMENT]
    if "body" not in cache:
        cache["body"] = orjson.dumps(build_document(request.app))
    return web.Response(body=cache["body"], content_type="application/json")


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        doc["description"] = op.description
    if op.params:
        doc["parameters"] = [p.as_dict() for p in op.params]
    if op.body is not None:
        schema = (
            op.body.schema(schemas)
            if isinstance(op.body, Raw)
            else component_schema(op.body, "validation", schemas)
        )
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {t: {"schema": schema} for t in op.body_types},
        }
    responses: dict[str, Any] = {}
    for reply in op.replies:
        responses[str(reply.status)] = _reply(reply, schemas)
    for status in sorted(set(op.errors)):
        problem = Reply(
            status, _ERROR_TEXT.get(status, "error"), ProblemOut, PROBLEM_JSON,
            headers=_ERROR_HEADERS.get(status, ()),
        )  # fmt: skip
        responses.setdefault(str(status), _reply(problem, schemas))
    doc["responses"] = responses
    doc["security"] = [{"bearer": []}, {"apiKey": []}] if op.secured else []
    return doc


def _reply(reply: Reply, schemas: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": reply.description}
    headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    for name in reply.headers:
        headers[name] = {"$ref": f"#/components/headers/{name}"}
    doc["headers"] = headers
    if reply.model is not None:
        doc["content"] = {
            reply.content_type: {"schema": component_schema(reply.model, "serialization", schemas)}
        }
    elif reply.schema is not None:
        doc["content"] = {reply.content_type: {"schema": reply.schema}}
    return doc


def component_schema(kind: Any, mode: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of ``kind``; models go to components and are referenced."""
    schema = TypeAdapter(kind).json_schema(mode=mode, ref_template=REF)  # type: ignore[arg-type]
    schemas.update(schema.pop("$defs", {}))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        schemas[kind.__name__] = schema
        return {"$ref": REF.format(model=kind.__name__)}
    return schema


def _operation_id(op: Operation) -> str:
    words = [
        part.strip("{}").replace("-", "_") for part in op.path.strip("/").split("/") if part
    ] or ["root"]
    return f"{op.method.lower()}_{'_'.join(words)}".replace(".", "_")


@dataclass(frozen=True, slots=True)
class Raw:
    """A body described by a function of the components (when one model cannot say it)."""

    build: Any  # Callable[[dict[str, Any]], dict[str, Any]]

    def schema(self, schemas: dict[str, Any]) -> dict[str, Any]:
        """The body's schema; it may add to ``schemas``."""
        result: dict[str, Any] = self.build(schemas)
        return result


#: A JSON object of any shape (answers not worth a model of their own).
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}

register(
    Operation(
        "GET", "/openapi.json", "This document", "operations", secured=False,
        replies=(Reply(200, "OpenAPI 3.1", schema=ANY_OBJECT),),
    )
)  # fmt: skip
