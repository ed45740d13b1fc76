"""The JSON log's repeat filter, and the bounded stop of a Kafka client."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from eventfold.kafka import stop_client
from eventfold.logs import JsonFormatter, RepeatFilter


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    """A WARNING record of logger ``name``."""
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_a_repeated_message_passes_once_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window=30.0, clock=clock)
    assert f.filter(record("aiokafka", "Unable connect to node with id %s", 1))
    # The same format string with other arguments is the same message.
    for i in range(5):
        clock.now += 1
        assert not f.filter(record("aiokafka", "Unable connect to node with id %s", i))
    clock.now = 31.0
    passed = record("aiokafka", "Unable connect to node with id %s", 1)
    assert f.filter(passed)
    assert passed.repeated == 5  # type: ignore[attr-defined]
    doc = orjson.loads(JsonFormatter().format(passed))
    assert doc["repeated"] == 5
    assert doc["msg"] == "Unable connect to node with id 1"
    # Nothing held back since: the next one through carries no count.
    clock.now = 62.0
    again = record("aiokafka", "Unable connect to node with id %s", 1)
    assert f.filter(again)
    assert not hasattr(again, "repeated")


def test_other_messages_loggers_and_libraries_are_not_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window=30.0, clock=clock)
    assert f.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s", 1))
    assert f.filter(record("aiokafka.consumer.group_coordinator", "Failed fetch messages from %s"))
    assert f.filter(record("aiokafka.consumer.fetcher", "Another message"))
    for _ in range(3):
        assert f.filter(record("eventfold.kafka", "kafka not reachable, retrying"))


def test_the_remembered_messages_are_bounded() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window=30.0, clock=clock)
    for i in range(RepeatFilter.MAX_KEYS + 10):
        assert f.filter(record("aiokafka", f"message {i}"))
    assert len(f._seen) == RepeatFilter.MAX_KEYS
    # The oldest were forgotten (let through again); the newest still held back.
    assert f.filter(record("aiokafka", "message 0"))
    assert not f.filter(record("aiokafka", f"message {RepeatFilter.MAX_KEYS + 9}"))


async def test_stop_client_absorbs_a_cancellation_raised_inside_the_stop() -> None:
    async def stop() -> None:
        inner = asyncio.create_task(asyncio.sleep(10))
        inner.cancel()
        await inner  # what aiokafka's fetcher close does with its own fetch tasks

    after = []
    await stop_client(stop, "test consumer")
    after.append("went on")
    assert after == ["went on"]


async def test_stop_client_gives_up_after_its_bound() -> None:
    stopped = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    await stop_client(hangs, "test consumer", within=0.05)
    assert stopped.is_set()


async def test_stop_client_lets_the_callers_own_cancellation_through() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(stop_client(slow, "test consumer"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
