"""Data models of tenant events."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eventfold import ids


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
