"""Readiness checks: each dependency probed with a deadline, summarised as ok/degraded/down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Check = Callable[[], Awaitable[Any]]
_TIMEOUT = 1.0


@dataclass(slots=True)
class Health:
    """The checks registered by each part of the process."""

    checks: dict[str, tuple[Check, bool]] = field(default_factory=dict)

    def add(self, name: str, check: Callable[[], Any], *, critical: bool) -> None:
        """Register ``check``; a failing critical check makes the process ``down``."""
        self.checks[name] = (check, critical)

    async def report(self) -> dict[str, Any]:
        """``{"status": "ok|degraded|down", "checks": {name: {"status", "error"?}}}``."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(self.checks[n][0]) for n in names))
        checks: dict[str, Any] = {}
        status = "ok"
        for name, error in zip(names, results, strict=True):
            critical = self.checks[name][1]
            if error is None:
                checks[name] = {"status": "ok"}
                continue
            checks[name] = {"status": "down", "error": error}
            status = "down" if critical else ("degraded" if status == "ok" else status)
        return {"status": status, "checks": checks}

    @staticmethod
    async def _run(check: Check) -> str | None:
        try:
            await asyncio.wait_for(check(), _TIMEOUT)
            return None
        except TimeoutError:
            return "timed out"
        except Exception as exc:
            return type(exc).__name__


HEALTH = web.AppKey("health", Health)
