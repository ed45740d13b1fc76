"""The circuit breaker the record cache, the rate limiter and the publisher's dedup share."""

from __future__ import annotations

import logging

import pytest

from eventfold.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    now = [0.0]
    changes: list[int] = []
    breaker = Breaker(failures=3, cooldown=2.0, on_change=changes.append, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive: starts counting again
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    assert breaker.state == CLOSED
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    now[0] = 2.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open for another cooldown
    assert breaker.state == OPEN
    assert not breaker.allow()
    now[0] = 5.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED
    assert breaker.allow()
    assert changes == [OPEN, 1, OPEN, 1, CLOSED]


def test_a_probe_that_never_reports_is_given_up_after_a_cooldown() -> None:
    now = [0.0]
    breaker = Breaker(failures=1, cooldown=2.0, clock=lambda: now[0])
    breaker.failure()
    now[0] = 2.0
    assert breaker.allow()  # the probe's caller is cancelled: no success, no failure
    assert breaker.state == HALF_OPEN
    now[0] = 3.0
    assert not breaker.allow()
    now[0] = 4.0
    assert breaker.allow()  # another caller probes
    breaker.success()
    assert breaker.state == CLOSED


def test_the_line_saying_it_opened_names_the_error_that_opened_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = Breaker(failures=2, name="cache", fallback="reads go to PostgreSQL")
    with caplog.at_level(logging.WARNING, logger="eventfold.breaker"):
        breaker.failure(ConnectionError("first"))
        breaker.failure(TimeoutError("redis did not answer"))
    [line] = caplog.records
    assert line.getMessage() == "cache breaker open: reads go to PostgreSQL"
    assert line.__dict__["error"] == "TimeoutError('redis did not answer')"
