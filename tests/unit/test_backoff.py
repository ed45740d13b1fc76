"""The one backoff helper: doubling pauses up to a cap, jittered, reset after a success."""

from __future__ import annotations

import asyncio

import pytest

from eventfold.backoff import Backoff, jittered, retry_delay


def test_pauses_double_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(0.5, 3.0, jitter=(1.0, 1.0))
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_each_pause_is_spread_within_the_jitter() -> None:
    pauses = [Backoff(1.0, 1.0).next() for _ in range(200)]
    assert all(0.5 <= p <= 1.5 for p in pauses)
    assert len(set(pauses)) > 100  # spread, not one value


def test_retry_delay_follows_the_same_rule() -> None:
    assert [retry_delay(n, 2.0, 10.0, jitter=(1.0, 1.0)) for n in (0, 1, 2, 3, 4)] == [
        2.0,
        2.0,
        4.0,
        8.0,
        10.0,
    ]
    assert 1.0 <= jittered(2.0) <= 3.0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(2.0, 1.0)


async def test_sleep_ends_early_when_stopped() -> None:
    stop = asyncio.Event()
    backoff = Backoff(30.0, 30.0)
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(backoff.sleep(stop), 5) is True
    assert await Backoff(0.01, 0.01).sleep(asyncio.Event()) is False
