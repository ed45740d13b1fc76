"""Data models of API key events (``subject`` = ``api_keys/{id}``).

The log never holds a key: ``apikey.created`` carries the SHA-256 hash of the
key's secret part, and only the gateway that created the key ever saw it (it
answers it once, in the 201 of ``POST …/api-keys``). These types are written
by the gateway alone; :func:`eventfold.events.validate_data` refuses them on
the raw events route, so a writer cannot mint itself an admin key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: What an API key may be granted: a tenant's roles, never platform-admin.
KeyRole = Literal["reader", "writer", "admin"]
#: A key id: 16 lowercase hex digits (64 random bits), unique across tenants.
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"


class ApiKeyCreated(BaseModel):
    """``apikey.created``: a key's id, name, roles and the hash of its secret."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=KEY_ID_PATTERN)
    #: No control characters (PostgreSQL text cannot hold U+0000 anyway).
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    roles: list[KeyRole] = Field(min_length=1, max_length=3)
    #: ``sha256:<hex>`` of the key's secret part (the secret has 256 random bits,
    #: so a fast hash is as safe as a slow one and keeps each request cheap).
    secret_hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class ApiKeyRevoked(BaseModel):
    """``apikey.revoked``: the key ``id`` is refused from now on."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=KEY_ID_PATTERN)
