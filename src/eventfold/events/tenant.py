"""Data models of tenant events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eventfold import ids

#: A collection's name, as in record paths.
CollectionName = Annotated[
    str, Field(pattern=f"^{ids.COLLECTION.pattern}$", min_length=1, max_length=63)
]


class TenantLimits(BaseModel):
    """Per-tenant request rate limits (a token bucket)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float = Field(default=100.0, gt=0, le=1_000_000)
    burst: int = Field(default=200, gt=0, le=10_000_000)


class TenantCreated(BaseModel):
    """``tenant.created``: the tenant's id, display name and limits."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=f"^{ids.TENANT_ID.pattern}$",
        min_length=ids.TENANT_ID_LENGTH[0],
        max_length=ids.TENANT_ID_LENGTH[1],
        description=ids.TENANT_ID_RULE,
    )
    name: str = Field(min_length=1, max_length=200)
    limits: TenantLimits = Field(default_factory=TenantLimits)


class TenantUpdated(BaseModel):
    """``tenant.updated``: a new display name, limits and/or personal collections (what is
    absent stays)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    limits: TenantLimits | None = None
    personal_collections: list[CollectionName] | None = Field(
        default=None,
        max_length=100,
        description="collections whose events' data is encrypted with a key per record, "
        "so an erasure can make the log forget one (the whole list; [] for none)",
    )


class TenantSuspended(BaseModel):
    """``tenant.suspended``: writes are refused (403 naming ``reason``); reads still answer;
    webhooks, syncs and workflow runs pause."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class TenantResumed(BaseModel):
    """``tenant.resumed``: a suspended tenant is active again (no data)."""

    model_config = ConfigDict(extra="forbid")


class TenantDeleted(BaseModel):
    """``tenant.deleted``: every derived state of the tenant goes; its id is never reused."""

    model_config = ConfigDict(extra="forbid")


class OperatorAction(BaseModel):
    """``tenant.operator_action``: what an operator did to the tenant from the CLI (the
    audit trail; the envelope's ``actor`` names the operator)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["replay", "verify", "dead-letters.redrive", "tenant.move"]
    details: dict[str, Any] = Field(default_factory=dict, description="what it did, in figures")
