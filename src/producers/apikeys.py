"""API key commands (admin): create one (shown once) and revoke one.

``POST /v1/tenants/{t}/api-keys`` ``{"name", "roles"}`` → 201 ``{"id", "key",
"consistency_token"}``: the key is made here, published as ``apikey.created``
carrying only the hash of its secret, answered once and then forgotten.
``DELETE …/api-keys/{id}`` → 202 ``{"id", "event_id", "consistency_token"}``
publishes ``apikey.revoked``; its event id is fixed per key, so revoking twice
is one effect. A request sending either write's token as
``X-Consistency-Token`` sees the key created (or refused) on any instance.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold import apikeys
from eventfold.appkeys import PLACEMENT, PUBLISHER
from eventfold.envelope import CloudEvent, pydantic_errors
from eventfold.errors import NotFound, ValidationFailed
from eventfold.events.apikey import KEY_ID_PATTERN, ApiKeyCreated, ApiKeyRevoked, KeyRole
from eventfold.openapi import BODY_ERRORS, TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.publisher import consistency_token
from eventfold.web import authorize_tenant, json_response, read_json
from producers import commands

_KEYS = "/v1/tenants/{tenant}/api-keys"
_KEY_ID = re.compile(KEY_ID_PATTERN)


class CreateApiKeyBody(BaseModel):
    """The body of ``POST …/api-keys``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="what the key is for (shown in the listing)",
    )
    roles: list[KeyRole] = Field(
        min_length=1, max_length=3, description="roles the key grants: reader, writer, admin"
    )


class ApiKeyCreatedOut(BaseModel):
    """``POST …/api-keys`` created: the key, in this answer only."""

    id: str = Field(pattern=KEY_ID_PATTERN, description="the key's public id")
    key: str = Field(
        pattern=r"^efk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$",
        description="send it as `X-API-Key`; it is never shown again",
    )
    consistency_token: str = Field(description="send it back to use the key at once")


class ApiKeyRevokedOut(BaseModel):
    """``DELETE …/api-keys/{id}`` accepted: ``apikey.revoked`` is published."""

    id: str
    event_id: str
    consistency_token: str = Field(description="after it, the key is refused everywhere")


def setup(app: web.Application) -> None:
    """Register the API key write routes."""
    app.router.add_post(_KEYS, create_api_key)
    app.router.add_delete(_KEYS + "/{id}", revoke_api_key)


register(
    Operation(
        "POST", _KEYS, "Create an API key (admin); the key is shown once", "api-keys",
        params=(TENANT,),
        body=CreateApiKeyBody,
        replies=(Reply(201, "created: `apikey.created` (with the hash only) is published",
                       ApiKeyCreatedOut),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "DELETE", _KEYS + "/{id}", "Revoke an API key (admin)", "api-keys",
        params=(TENANT, Param("id", "path", {"type": "string", "pattern": KEY_ID_PATTERN})),
        replies=(Reply(202, "accepted: `apikey.revoked` is published", ApiKeyRevokedOut),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def _event(tenant: str, event_type: str, key_id: str, data: dict[str, Any]) -> CloudEvent:
    return commands.gateway_event(
        tenant=tenant, event_id=f"{event_type}:{key_id}", event_type=event_type,
        subject=f"api_keys/{key_id}", data=data,
    )  # fmt: skip


async def create_api_key(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/api-keys`` (admin): a new key, shown in this answer only."""
    _, tenant = await authorize_tenant(request, "admin")
    try:
        body = CreateApiKeyBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid API key", errors=pydantic_errors(exc)) from None
    key_id, key, secret_hash = apikeys.new_key()
    data = ApiKeyCreated(
        id=key_id, name=body.name, roles=sorted(set(body.roles)), secret_hash=secret_hash
    )
    event = _event(tenant.id, "apikey.created", key_id, data.model_dump(mode="json"))
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {"id": key_id, "key": key, "consistency_token": consistency_token([result])},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


async def revoke_api_key(request: web.Request) -> web.Response:
    """``DELETE /v1/tenants/{t}/api-keys/{id}`` (admin): refuse the key from now on."""
    _, tenant = await authorize_tenant(request, "admin")
    key_id = request.match_info["id"]
    if _KEY_ID.fullmatch(key_id) is None:
        raise NotFound(f"no API key {key_id[:64]}")
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        found = await conn.fetchval(
            "SELECT true FROM eventfold.api_keys WHERE id = $1 AND tenant = $2",
            key_id,
            tenant.id,
        )
    if not found:
        raise NotFound(f"no API key {key_id} in tenant {tenant.id}")
    event = _event(
        tenant.id, "apikey.revoked", key_id, ApiKeyRevoked(id=key_id).model_dump(mode="json")
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {
            "id": key_id,
            "event_id": event.id,
            "consistency_token": consistency_token([result]),
        },
        status=202,
    )
