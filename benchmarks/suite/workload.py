"""The fixed workload: 50 tenants, ~700-byte events, upserts/patches/deletes, hot keys.

Deterministic for a seed, so every run and every peer sees the same events.
The key distribution is skewed (a few hot records per tenant take a fifth of
the writes); patches and deletes only name records the generator created, so
almost every event applies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: Records per tenant, and how many of them are hot.
KEYS_PER_TENANT = 2000
HOT_KEYS = 10
HOT_SHARE = 0.2


@dataclass(slots=True)
class Workload:
    """A generator of benchmark events over ``tenants`` (ids chosen by the caller)."""

    tenants: list[str]
    seed: int = 7
    _rng: random.Random = field(init=False)
    _live: list[set[int]] = field(init=False)
    _n: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._live = [set() for _ in self.tenants]

    def events(self, count: int, *, prefix: str = "w") -> Iterator[tuple[str, dict[str, Any]]]:
        """``count`` further events as (tenant, CloudEvent dict), ids unique per run."""
        rng = self._rng
        for _ in range(count):
            self._n += 1
            t = rng.randrange(len(self.tenants))
            key = (
                rng.randrange(HOT_KEYS)
                if rng.random() < HOT_SHARE
                else rng.randrange(HOT_KEYS, KEYS_PER_TENANT)
            )
            live = self._live[t]
            roll = rng.random()
            if key not in live or roll < 0.55:
                kind, data = "record.upserted", document(self._n, rng)
                live.add(key)
            elif roll < 0.9:
                kind, data = "record.patched", patch(self._n, rng)
            else:
                kind, data = "record.deleted", None
                live.discard(key)
            ev: dict[str, Any] = {
                "specversion": "1.0",
                "id": f"{prefix}-{self._n}",
                "source": "bench/suite",
                "type": kind,
                "subject": f"orders/o{key}",
            }
            if data is not None:
                ev["data"] = data
            yield self.tenants[t], ev


def document(n: int, rng: random.Random) -> dict[str, Any]:
    """A ~700-byte order document."""
    return {
        "customer": f"customer-{rng.randrange(10_000):05d}",
        "status": rng.choice(("new", "paid", "shipped", "delivered")),
        "total_cents": rng.randrange(100_000),
        "currency": "EUR",
        "lines": [
            {"sku": f"SKU-{rng.randrange(10_000):05d}", "qty": 1 + k, "price_cents": 1999 + k}
            for k in range(4)
        ],
        "seq": n,
        "note": "x" * 240,
    }


def patch(n: int, rng: random.Random) -> dict[str, Any]:
    """An RFC 7396 merge patch changing a few fields."""
    return {"status": rng.choice(("paid", "shipped", "delivered", "returned")), "seq": n,
            "tracking": f"TRK{rng.randrange(10**9):09d}"}  # fmt: skip
