"""Readiness reports (eventfold.health): probed with deadlines, reused for ``max_age``."""

from __future__ import annotations

import asyncio

from eventfold.health import Health


class Dependency:
    """A check that counts its calls and fails while ``down``."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionError("refused")


async def test_concurrent_callers_share_one_probe() -> None:
    dep = Dependency()
    health = Health(max_age=60)
    health.add("db", dep, critical=True)
    reports = await asyncio.gather(*(health.report() for _ in range(50)))
    assert dep.calls == 1
    assert all(r == {"status": "ok", "checks": {"db": {"status": "ok"}}} for r in reports)
    dep.down = True
    assert (await health.report())["status"] == "ok"  # within max_age: the same report
    assert dep.calls == 1


async def test_a_report_older_than_max_age_is_probed_again() -> None:
    dep = Dependency()
    health = Health(max_age=0)
    health.add("db", dep, critical=True)
    assert (await health.report())["status"] == "ok"
    dep.down = True
    report = await health.report()
    assert report == {
        "status": "down",
        "checks": {"db": {"status": "down", "error": "ConnectionError"}},
    }
    assert dep.calls == 2 == health.probes


async def test_a_caller_going_away_does_not_cancel_the_probe() -> None:
    dep = Dependency()
    health = Health(max_age=60)
    health.add("db", dep, critical=False)
    first = asyncio.ensure_future(health.report())
    await asyncio.sleep(0)
    first.cancel()
    assert (await health.report())["status"] == "ok"
    assert dep.calls == 1
