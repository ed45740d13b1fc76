"""The analytics processor's fold (pure: its faust tables in memory, no broker).

What a worker does with each record: count it once per window, type and
collection; remember the records it touched; skip duplicates and re-deliveries;
prune windows that can no longer change, with tombstones queued for the right
changelog partition.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from faust.types import TP
from faust.types.tuples import Message

from api.analytics import events_per_second
from consumers.analytics.processor import Analytics, WorkerCrashed, first_offset, is_first_record
from eventfold.analytics_windows import (
    SETTLE_MARGIN,
    CountKey,
    collection_of,
    decode_touched,
    settled,
    touched_key,
    window_start,
)
from eventfold.metrics import Metrics
from eventfold.settings import Settings

NOW = 1_800_000_000.0  # a window boundary of both sizes
GRACE = 60


@pytest.fixture
def worker(tmp_path: Path) -> Analytics:
    settings = dataclasses.replace(
        Settings.from_env({"EVENTFOLD_HOME": str(tmp_path)}), analytics_grace_seconds=GRACE
    )
    return Analytics(settings, None, Metrics())


def record(tenant: str, event_id: str, subject: str | None, at: float, **extra: object) -> bytes:
    doc: dict[str, object] = {
        "id": event_id,
        "tenant": tenant,
        "type": "record.upserted",
        "time": datetime.fromtimestamp(at, UTC).isoformat(),
        **extra,
    }
    if subject is not None:
        doc["subject"] = subject
    return orjson.dumps(doc)


def count(worker: Analytics, value: bytes, partition: int, offset: int, now: float) -> str:
    # The late check reads the wall clock; the fold is given a fixed one.
    import consumers.analytics.processor as processor

    real = processor.time.time
    processor.time.time = lambda: now  # type: ignore[assignment]
    try:
        return worker._count(value, partition, offset, now)
    finally:
        processor.time.time = real  # type: ignore[assignment]


def counters(worker: Analytics, window: str) -> dict[tuple[str, str, int], int]:
    out: dict[tuple[str, str, int], int] = {}
    for raw, (n, _offset) in worker.counts.items():
        key = CountKey.decode(raw)
        if key.window == window:
            out[(key.tenant, key.collection, key.start)] = n
    return out


def test_each_event_counts_once_per_window_and_marks_its_record(worker: Analytics) -> None:
    at = NOW - 30
    for offset, subject in enumerate(["orders/1", "orders/2", "orders/1", "users/9"]):
        assert count(worker, record("t1", f"e{offset}", subject, at), 0, offset, NOW) == "counted"
    assert counters(worker, "1m") == {
        ("t1", "orders", window_start(at, 60)): 3,
        ("t1", "users", window_start(at, 60)): 1,
    }
    assert counters(worker, "1h") == {
        ("t1", "orders", window_start(at, 3600)): 3,
        ("t1", "users", window_start(at, 3600)): 1,
    }
    touched = sorted(decode_touched(k)[3:] for k, _ in worker.touched.items())
    # orders/1 twice, but one record; once per window size.
    records = [("orders", "orders/1"), ("orders", "orders/2"), ("users", "users/9")]
    assert touched == sorted(records * 2)


def test_duplicates_redeliveries_replays_and_late_events(worker: Analytics) -> None:
    at = NOW - 30
    assert count(worker, record("t1", "a", "orders/1", at), 0, 10, NOW) == "counted"
    # The same id in a later record: a duplicate (a producer retry, a republish).
    assert count(worker, record("t1", "a", "orders/1", at), 0, 11, NOW) == "duplicate"
    # The same record again (re-delivered after a crash): its counters know the offset.
    assert count(worker, record("t1", "a", "orders/1", at), 0, 10, NOW) == "late"
    # The same id under another key lands on another partition, where it may sit at the
    # very offset of its original: still a duplicate, not a re-delivery.
    assert count(worker, record("t1", "a", "orders/4", at), 1, 10, NOW) == "duplicate"
    assert count(worker, record("t1", "r", "orders/1", at, eventfoldreplay="x"), 0, 12, NOW) == (
        "replay"
    )
    # Closed longer than the grace ago: not counted.
    old = NOW - 3600 - GRACE - 1
    assert count(worker, record("t1", "b", "orders/1", old), 0, 13, NOW) == "late"
    assert count(worker, b"not json", 0, 14, NOW) == "invalid"
    assert sum(counters(worker, "1m").values()) == 1
    assert sum(counters(worker, "1h").values()) == 1
    assert sorted(decode_touched(k)[4] for k, _ in worker.touched.items()) == ["orders/1"] * 2


def test_prune_drops_settled_windows_of_assigned_partitions_only(worker: Analytics) -> None:
    at = NOW + 10  # early in a 1 h window
    count(worker, record("t1", "a", "orders/1", at), 0, 1, at)
    count(worker, record("t1", "b", "orders/2", at), 1, 1, at)
    for table in worker.tables().values():
        table._dirty.clear()  # as after a commit
    # Past the 1m window's settling, not the 1h window's.
    later = window_start(at, 60) + 60 + GRACE + SETTLE_MARGIN + 1
    assert worker.prune(later, assigned={0}) == 2  # partition 0's 1m counter and touched key
    assert {k.partition for k in map(CountKey.decode, dict(worker.counts.items()))} == {0, 1}
    assert set(counters(worker, "1m")) == {("t1", "orders", window_start(at, 60))}  # partition 1
    assert list(worker.counts._dirty.values()) == [(0, None)]
    assert list(worker.touched._dirty.values()) == [(0, None)]
    # Past every window of the ids' time: the seen ids go too.
    much_later = window_start(at, 3600) + 3600 + GRACE + SETTLE_MARGIN + 1
    # partition 1's 1m counter and touched key; both 1h counters and touched keys; 2 ids
    assert worker.prune(much_later, assigned={0, 1}) == 2 + 4 + 2
    assert len(worker.counts) == len(worker.touched) == len(worker.seen) == 0


def test_window_helpers() -> None:
    assert collection_of("orders/1") == "orders"
    assert collection_of("plain") == ""
    assert collection_of(None) == ""
    key = touched_key("t", "1m", 60, "orders", "orders/a/b")
    assert decode_touched(key) == ("t", "1m", 60, "orders", "orders/a/b")
    assert not settled("1m", 0, 10, 60 + 10 + SETTLE_MARGIN)
    assert settled("1m", 0, 10, 60 + 10 + SETTLE_MARGIN + 1)
    assert first_offset([5, 0, 1]) == 5
    assert first_offset(7) == 7  # the first version's value
    assert first_offset(None) is None
    assert is_first_record([5, 0, 1], 0, 5)
    assert not is_first_record([5, 0, 1], 1, 5)  # same offset, another partition
    assert not is_first_record([5, 0, 1], 0, 6)
    assert is_first_record(7, 3, 7)  # the first version's value: the offset alone


def test_events_per_second_over_the_elapsed_part_of_an_open_window() -> None:
    assert events_per_second(120, 0, 60, 600) == 2.0
    assert events_per_second(30, 0, 60, 15) == 2.0
    assert events_per_second(5, 0, 60, 0.2) == 5.0  # at least one second


async def test_records_reach_the_agent_as_the_log_holds_them(worker: Analytics) -> None:
    """The topic's schema hands keys and values over as bytes, through no codec."""
    value = b'{"tenant": "t", "id": "e1", "type": "record.upserted"}'
    msg = Message("events", 0, 7, 0.0, 0, None, b"t/orders/1", value, None, tp=TP("events", 0))
    event = await worker.topic.schema.decode(worker.app, msg)
    assert event.key == b"t/orders/1"
    assert event.value is value


def test_a_crashed_consumer_stops_the_worker_and_its_readiness(worker: Analytics) -> None:
    # With no faust Worker around, a crash only marks the services: the processor's
    # loop must notice, or the worker stays up counting nothing (seen after a rebalance).
    worker._started = True
    worker._recovered = lambda: True  # type: ignore[method-assign]
    worker._check_not_crashed()
    assert worker.is_ready()
    worker.app.consumer.crash_reason = KeyError("eventfold.analytics-seen-changelog")
    with pytest.raises(WorkerCrashed, match="seen-changelog"):
        worker._check_not_crashed()
    assert not worker.is_ready()


def test_the_changelog_topics_are_the_apps_own(worker: Analytics) -> None:
    # declare_changelogs creates these names; faust must then find them existing.
    names = {t.table.changelog_topic.get_topic_name() for t in worker.tables().values()}
    assert names == {f"{worker.app.conf.id}-{n}-changelog" for n in ("counts", "touched", "seen")}
