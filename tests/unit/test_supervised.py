"""A supervised processor that does not stop when asked is cancelled, not waited on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from consumers.runtime import runner
from eventfold.metrics import Metrics


class Deaf:
    """A processor stuck where ``stop`` is not looked at (a send waiting for metadata)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def is_ready(self) -> bool:
        return True


async def test_close_cancels_a_processor_that_does_not_stop_in_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runner, "STOP_SECONDS", 0.05)
    deaf = Deaf()

    def factory(*_: Any) -> Deaf:
        return deaf

    supervised = runner.Supervised("deaf", factory, None, None, Metrics())  # type: ignore[arg-type]
    await deaf.started.wait()
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        await supervised.close()  # returns, raising nothing
    assert supervised.task.done()
    assert deaf.cancelled
    warned = [
        r for r in caplog.records if r.getMessage() == "processor did not stop in time, cancelled"
    ]
    assert [getattr(r, "processor", None) for r in warned] == ["deaf"]
