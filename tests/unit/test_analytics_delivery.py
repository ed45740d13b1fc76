"""The eager hand-over of fetched records (consumers.analytics.delivery), on a real mode Service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

from consumers.analytics.delivery import deliver_eagerly


class _Consumer(Service):
    """A mode service with faust's consumer's flow flag: what the drain calls on."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()


@pytest.fixture
def consumer() -> _Consumer:
    c = _Consumer()
    deliver_eagerly(c)
    return c


async def test_a_callback_that_finishes_at_once_runs_on_the_callers_stack(
    consumer: _Consumer,
) -> None:
    delivered: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)

    async def callback(n: int) -> str:
        await queue.put(n)  # room: no suspension
        delivered.append(n)
        return f"ok {n}"

    tasks_before = len(asyncio.all_tasks())
    result = await consumer.wait_first(callback(1), consumer.suspend_flow.wait())
    assert (result.done, result.results, result.stopped) == ([result.done[0]], ["ok 1"], False)
    assert delivered == [1]
    assert queue.get_nowait() == 1
    # No task was left behind (mode's path leaves three cancelled ones to be reaped).
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_blocked_callback_is_continued_until_it_finishes(consumer: _Consumer) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)

    async def callback() -> str:
        await queue.put(1)  # full: waits for the reader below
        return "put"

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert queue.get_nowait() == 0
    result = await asyncio.wait_for(waiting, 5)
    assert result.results == ["put"]
    assert queue.get_nowait() == 1


async def test_a_suspension_while_blocked_cancels_the_delivery_as_faust_does(
    consumer: _Consumer,
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    cancelled = asyncio.Event()

    async def callback() -> None:
        try:
            await queue.put(1)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0)
    consumer.suspend_flow.set()
    result = await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(cancelled.wait(), 5)
    # The suspension won (mode's Event.wait answers True); nothing was put.
    assert result.results == [True]
    assert queue.qsize() == 1


async def test_a_suspended_flow_goes_through_modes_path(consumer: _Consumer) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)

    async def callback() -> None:
        await queue.put(1)

    consumer.suspend_flow.set()
    result = await asyncio.wait_for(
        consumer.wait_first(callback(), consumer.suspend_flow.wait()), 5
    )
    # Not started eagerly: mode's wait_first, where the set suspension wins at once.
    assert result.results == [True]
    assert queue.qsize() == 1


async def test_an_error_in_the_callback_reaches_the_caller(consumer: _Consumer) -> None:
    async def callback() -> Any:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())
