"""The tenant directory: which tenants exist, with their name, status and limits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

#: Tenants are never deleted in v1, so a positive answer may be reused briefly.
_POSITIVE_TTL = 30.0


@dataclass(frozen=True, slots=True)
class Tenant:
    """A registered tenant as the API shows it."""

    id: str
    name: str
    status: str
    limits: dict[str, Any]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The tenant resource of ``GET /v1/tenants/{t}``."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "limits": self.limits,
            "created_at": self.created_at,
        }


class TenantDirectory:
    """Looks tenants up in PostgreSQL, keeping found ones in memory for a while."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[float, Tenant]] = {}

    async def get(self, tenant_id: str, *, fresh: bool = False) -> Tenant | None:
        """The tenant, or None when it does not exist (yet)."""
        hit = self._cache.get(tenant_id)
        if hit is not None and not fresh and time.monotonic() - hit[0] < _POSITIVE_TTL:
            return hit[1]
        async with self._pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(
                "SELECT id, name, status, limits, created_at FROM eventfold.tenants WHERE id = $1",
                tenant_id,
            )
        if row is None:
            self._cache.pop(tenant_id, None)
            return None
        tenant = Tenant(
            id=row["id"],
            name=row["name"],
            status=row["status"],
            limits=row["limits"],
            created_at=row["created_at"],
        )
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: a simple reset beats an LRU for this size
        self._cache[tenant_id] = (time.monotonic(), tenant)
        return tenant
