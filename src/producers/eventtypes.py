"""Tenant event type commands (admin): register a type, add a version.

``POST /v1/tenants/{t}/event-types`` ``{"type", "schema", "compatibility"?,
"projection"?}`` → 202 ``{"type", "version": 1, "consistency_token"}`` publishes
``eventtype.registered``; ``PUT …/event-types/{type}`` ``{"schema",
"compatibility"?, "projection"?, "upcast"?}`` publishes
``eventtype.version_added`` with the next version once the schema is
compatible with the latest (409 listing each incompatibility otherwise). The
schema must be JSON Schema 2020-12 with local references only (422 with
pointers). The event id derives from the type, the version and the body: a
retried request is one effect, and of two different requests racing for one
version the projector keeps the first in the log and rejects the other.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold.appkeys import EVENT_TYPES, PUBLISHER
from eventfold.envelope import pydantic_errors
from eventfold.errors import Conflict, FieldError, NotFound, ValidationFailed
from eventfold.eventtypes import compat, names, schemas
from eventfold.eventtypes.compat import Mode
from eventfold.eventtypes.definitions import TypeHistory
from eventfold.eventtypes.projection import Projection
from eventfold.eventtypes.upcast import Steps, implicit_defaults, upcast_schema
from eventfold.openapi import BODY_ERRORS, TENANT, Operation, Param, Reply, register
from eventfold.publisher import consistency_token
from eventfold.web import authorize_tenant, json_response, read_json
from producers import commands

_TYPES = "/v1/tenants/{tenant}/event-types"
TYPE_PARAM = Param(
    "type", "path", {"type": "string", "pattern": names.TYPE_NAME_RULE}, "event type name"
)


class RegisterTypeBody(BaseModel):
    """The body of ``POST …/event-types``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = Field(max_length=names.MAX_TYPE_NAME, description="dotted lower-case name")
    schema_: Any = Field(alias="schema", description="JSON Schema 2020-12 of `data`")
    compatibility: Mode = Field(default="backward", description="checked as versions are added")
    projection: Projection | None = Field(
        default=None, description="how the type's events fold into a record"
    )


class AddVersionBody(BaseModel):
    """The body of ``PUT …/event-types/{type}``: the next version."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Any = Field(alias="schema", description="JSON Schema 2020-12 of `data`")
    compatibility: Mode | None = Field(
        default=None, description="the type's mode from now on (absent: unchanged)"
    )
    projection: Projection | None = Field(
        default=None, description="absent: the previous version's; null: none"
    )
    upcast: Steps = Field(
        default_factory=list,
        description="how data of the previous version is lifted: rename, default, drop",
    )


class TypeAccepted(BaseModel):
    """A version accepted: its ``eventtype.*`` event is published."""

    type: str
    version: int
    consistency_token: str = Field(description="send it back to publish events of this version")


def setup(app: web.Application) -> None:
    """Register the event type write routes."""
    app.router.add_post(_TYPES, register_type)
    app.router.add_put(_TYPES + "/{type}", add_version)


register(
    Operation(
        "POST", _TYPES, "Register a tenant event type (admin)", "event-types",
        params=(TENANT,),
        body=RegisterTypeBody,
        replies=(Reply(202, "accepted: `eventtype.registered` (version 1) is published",
                       TypeAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
    Operation(
        "PUT", _TYPES + "/{type}", "Add a version to a tenant event type (admin)", "event-types",
        description="409 with `errors[].path` (pointers into `schema`) when the schema is not "
        "compatible with the latest version under the type's compatibility mode.",
        params=(TENANT, TYPE_PARAM),
        body=AddVersionBody,
        replies=(Reply(202, "accepted: `eventtype.version_added` is published", TypeAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
)  # fmt: skip


def _checked_schema(schema: Any) -> None:
    errors = schemas.check_schema(schema)
    if errors:
        raise ValidationFailed("the schema is not a usable JSON Schema 2020-12", errors=errors)


async def _publish(
    request: web.Request, tenant: str, event_type: str, data: dict[str, Any]
) -> web.Response:
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
    name, version = data["type"], data["version"]
    event = commands.gateway_event(
        tenant=tenant,
        event_id=f"{event_type}:{name}:{version}:{digest}",
        event_type=event_type,
        subject=f"event-types/{name}",
        data=data,
    )
    [result] = await request.app[PUBLISHER].publish(tenant, [event])
    return json_response(
        {"type": name, "version": version, "consistency_token": consistency_token([result])},
        status=202,
    )


async def register_type(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/event-types`` (admin): version 1 of a new type."""
    _, tenant = await authorize_tenant(request, "admin")
    raw = await read_json(request)
    try:
        body = RegisterTypeBody.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed("invalid event type", errors=pydantic_errors(exc)) from None
    problem = names.name_problem(body.type)
    if problem is not None:
        raise ValidationFailed("invalid event type name", errors=[FieldError("/type", problem)])
    _checked_schema(body.schema_)
    registry = request.app[EVENT_TYPES]
    if await registry.history(tenant.id, body.type, fresh=True) is not None:
        raise Conflict(
            f"event type {body.type} exists already; add a version with PUT "
            f"/v1/tenants/{tenant.id}/event-types/{body.type}"
        )
    data = {
        "type": body.type,
        "version": 1,
        "schema": raw["schema"],
        "compatibility": body.compatibility,
        "projection": raw.get("projection"),
        "upcast": [],
    }
    return await _publish(request, tenant.id, "eventtype.registered", data)


def _previous_projection(history: TypeHistory) -> dict[str, Any] | None:
    projection = history.versions[history.latest].projection
    if projection is None:
        return None
    doc = projection.model_dump(mode="json")
    if doc.get("fields") is None:
        doc.pop("fields", None)
    return doc


async def add_version(request: web.Request) -> web.Response:
    """``PUT /v1/tenants/{t}/event-types/{type}`` (admin): the next, compatible version."""
    _, tenant = await authorize_tenant(request, "admin")
    type_name = request.match_info["type"]
    if names.name_problem(type_name) is not None:
        raise NotFound(f"no event type {type_name[:128]}")
    raw = await read_json(request)
    try:
        body = AddVersionBody.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed("invalid event type version", errors=pydantic_errors(exc)) from None
    _checked_schema(body.schema_)
    history = await request.app[EVENT_TYPES].history(tenant.id, type_name, fresh=True)
    if history is None:
        raise NotFound(
            f"no event type {type_name} in tenant {tenant.id}; register it with POST "
            f"/v1/tenants/{tenant.id}/event-types"
        )
    previous = history.versions[history.latest]
    mode: Mode = body.compatibility or previous.compatibility  # type: ignore[assignment]
    lifted = upcast_schema(
        previous.schema, [*body.upcast, *implicit_defaults(previous.schema, body.schema_)]
    )
    found = compat.check(previous.schema, body.schema_, mode, upcast_previous=lifted)
    if found:
        raise Conflict(
            f"the schema is not {mode}-compatible with version {previous.version} of {type_name}",
            errors=[FieldError(i.path, i.message) for i in found],
        )
    data = {
        "type": type_name,
        "version": previous.version + 1,
        "schema": raw["schema"],
        "compatibility": mode,
        "projection": raw["projection"]
        if "projection" in body.model_fields_set
        else _previous_projection(history),
        "upcast": raw.get("upcast") or [],
    }
    return await _publish(request, tenant.id, "eventtype.version_added", data)
