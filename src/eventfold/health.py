"""Readiness checks: each dependency probed with a deadline, summarised as ok/degraded/down.

Every check runs at once and gets :data:`CHECK_TIMEOUT` seconds; one that has
not finished by then is reported as timed out and cancelled *without* waiting
for it, so a report answers within that time even when a client library is
slow to honour a cancellation.

``/health/ready`` is public and unauthenticated, so a report is reused for
:attr:`Health.max_age` seconds (``EVENTFOLD_HEALTH_CACHE_SECONDS``, 1 s by
default) and callers arriving while a probe runs share it: however often it is
asked, a process probes its dependencies (a ``SELECT 1``, a Redis ``PING``, a
Kafka metadata request) at most once per ``max_age``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Check = Callable[[], Awaitable[Any]]
CHECK_TIMEOUT = 1.0


@dataclass(slots=True)
class Health:
    """The checks registered by each part of the process."""

    checks: dict[str, tuple[Check, bool]] = field(default_factory=dict)
    timeout: float = CHECK_TIMEOUT
    #: How long a report is served again before the next probe (0: probe every call).
    max_age: float = 1.0
    #: The last probe: its (monotonic) start and its task (shared while it runs).
    _probe: tuple[float, asyncio.Task[dict[str, Any]]] | None = field(
        default=None, init=False, repr=False
    )
    #: How many probes ran (tests, and to tell a cached answer from a fresh one).
    probes: int = field(default=0, init=False)

    def add(self, name: str, check: Callable[[], Any], *, critical: bool) -> None:
        """Register ``check``; a failing critical check makes the process ``down``."""
        self.checks[name] = (check, critical)

    async def report(self) -> dict[str, Any]:
        """The latest probe's report, probing again once it is ``max_age`` old."""
        now = time.monotonic()
        probe = self._probe
        if probe is None or (probe[1].done() and now - probe[0] >= self.max_age):
            probe = self._probe = (now, asyncio.create_task(self.probe(), name="health-probe"))
        # Shielded: one caller going away does not cancel the others' probe.
        return await asyncio.shield(probe[1])

    async def probe(self) -> dict[str, Any]:
        """``{"status": "ok|degraded|down", "checks": {name: {"status", "error"?}}}``, now."""
        self.probes += 1
        names = list(self.checks)
        tasks = {
            name: asyncio.create_task(_run(self.checks[name][0]), name=f"health-{name}")
            for name in names
        }
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=self.timeout)
            for task in pending:
                task.cancel()
        checks: dict[str, Any] = {}
        status = "ok"
        for name in names:
            task = tasks[name]
            error = task.result() if task.done() and not task.cancelled() else "timed out"
            if error is None:
                checks[name] = {"status": "ok"}
                continue
            checks[name] = {"status": "down", "error": error}
            critical = self.checks[name][1]
            status = "down" if critical else ("degraded" if status == "ok" else status)
        return {"status": status, "checks": checks}


async def _run(check: Check) -> str | None:
    try:
        await check()
        return None
    except TimeoutError:
        return "timed out"
    except Exception as exc:
        return type(exc).__name__


class CheckOut(BaseModel):
    """One dependency's state."""

    status: Literal["ok", "down"]
    error: str | None = None


class HealthOut(BaseModel):
    """The process's state: ``down`` when a critical dependency is."""

    model_config = ConfigDict(title="Health")

    status: Literal["ok", "degraded", "down"]
    checks: dict[str, CheckOut]
