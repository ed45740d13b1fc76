"""Data models of integration events (``subject`` = ``integrations/{id}``).

An integration is configuration carried by the log like API keys are: the
gateway publishes ``integration.created`` / ``integration.updated`` /
``integration.deleted`` and the projector folds them into the platform table
``eventfold.integrations``. Credentials never enter the log in plain text:
``headers_sealed`` and ``webhook_secret_sealed`` are AES-GCM sealed values
(:mod:`eventfold.sealing`). These types are written by the gateway alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: An integration id: 16 lowercase hex digits, unique across tenants.
INTEGRATION_ID_PATTERN = r"^[0-9a-f]{16}$"
#: Connector kinds (see :mod:`consumers.sync.connectors`).
Kind = Literal["http-poll"]
_FIELD = r"^[A-Za-z0-9_.-]{1,64}$"


class PollConfig(BaseModel):
    """The non-secret configuration of an ``http-poll`` integration."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    collection: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    interval_seconds: int = Field(ge=1, le=86_400)
    cursor_param: str = Field(default="cursor", pattern=_FIELD)
    items_field: str = Field(default="items", pattern=_FIELD)
    cursor_field: str = Field(default="next_cursor", pattern=_FIELD)
    id_field: str = Field(default="id", pattern=_FIELD)
    deleted_field: str | None = Field(default=None, pattern=_FIELD)
    #: A full pass from the first page every this many seconds (null: never).
    reconcile_seconds: int | None = Field(default=None, ge=1, le=30 * 86_400)
    #: On a full pass, items not seen are deleted (only for sources listing everything).
    reconcile_deletes: bool = False


class IntegrationCreated(BaseModel):
    """``integration.created``: the configuration, with its secrets sealed."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=INTEGRATION_ID_PATTERN)
    kind: Kind
    config: PollConfig
    headers_sealed: str | None = Field(default=None, max_length=65_536)
    webhook_secret_sealed: str = Field(min_length=1, max_length=4096)
    paused: bool = False


class IntegrationUpdated(BaseModel):
    """``integration.updated``: the new configuration (whole) and pause flag."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=INTEGRATION_ID_PATTERN)
    config: PollConfig | None = None
    #: A new sealed header set; absent keeps the old one, ``""`` removes it.
    headers_sealed: str | None = Field(default=None, max_length=65_536)
    paused: bool | None = None


class IntegrationDeleted(BaseModel):
    """``integration.deleted``: the integration ``id`` stops syncing."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=INTEGRATION_ID_PATTERN)


def headers_purpose(integration_id: str) -> str:
    """The sealing purpose of an integration's headers (binds them to its id)."""
    return f"integration-headers:{integration_id}"


def secret_purpose(integration_id: str) -> str:
    """The sealing purpose of an integration's webhook secret."""
    return f"integration-webhook:{integration_id}"
