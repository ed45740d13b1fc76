"""What an analytics transaction commits: the positions applied, with every write they need.

The faust table and consumer are replaced by small fakes of what the write-behind
tables and :class:`OwnedCommits` use (the changelog topic's serialisers and producer
``send``, a transaction ``commit``); the integration tests run them against Kafka.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.util import commit_structure_validate

from consumers.analytics.changelog import OwnedCommits, WriteBehindTable

TOPIC = "events"


@dataclass
class FakeChangelog:
    """A changelog topic whose producer records each send and acknowledges it at once.

    The surface the write-behind table uses: the topic's name, its serialisers
    (identity here) and the app's producer (faust's transaction manager).
    """

    sent: list[tuple[Any, Any, int]] = field(default_factory=list)

    @property
    def app(self) -> FakeChangelog:
        return self

    async def maybe_start_producer(self) -> FakeChangelog:
        return self

    def get_topic_name(self) -> str:
        return "analytics-changelog"

    def prepare_key(self, key: Any, serializer: Any, schema: Any, headers: Any) -> Any:
        return key, headers

    def prepare_value(self, value: Any, serializer: Any, schema: Any, headers: Any) -> Any:
        return value, headers

    async def send(
        self, topic: str, key: Any, value: Any, partition: int, *_: Any
    ) -> asyncio.Future[None]:
        assert topic == "analytics-changelog"
        self.sent.append((key, value, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class FakeTable:
    data: dict[Any, Any] = field(default_factory=dict)
    changelog_topic: FakeChangelog = field(default_factory=FakeChangelog)
    key_serializer: str = "json"
    value_serializer: str = "json"


@dataclass
class FakeTransactions:
    """faust's transaction manager: the offsets of each commit, in order."""

    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    async def commit(
        self, offsets: dict[TopicPartition, int], start_new_transaction: bool = True
    ) -> bool:
        commit_structure_validate(offsets)  # what aiokafka's producer checks first
        self.commits.append(dict(offsets))
        return True


@dataclass
class FakeConsumer:
    transactions: FakeTransactions = field(default_factory=FakeTransactions)


def setup(
    assigned: set[int], rebalancing: list[bool] | None = None
) -> tuple[OwnedCommits, WriteBehindTable, FakeTable, FakeTransactions]:
    raw = FakeTable()
    table = WriteBehindTable(raw)
    flag = rebalancing if rebalancing is not None else [False]
    commits = OwnedCommits(TOPIC, [table], lambda: assigned, lambda: flag[0])
    consumer = FakeConsumer()
    commits.install(consumer)
    return commits, table, raw, consumer.transactions


def offsets(**by_partition: int) -> dict[TopicPartition, int]:
    return {TopicPartition(TOPIC, int(p[1:])): o for p, o in by_partition.items()}


async def test_a_commit_covers_the_applied_positions_and_ignores_fausts_offsets() -> None:
    commits, table, raw, transactions = setup({0, 1})
    table.put("a", 1, 0)
    commits.applied(0, 10)
    table.put("b", 1, 1)
    commits.applied(1, 4)
    # faust's own idea of the offsets (here: far ahead) is not what is committed.
    assert await commits.commit(offsets(p0=99, p1=99))
    assert transactions.commits == [offsets(p0=11, p1=5)]
    assert sorted(raw.changelog_topic.sent) == [("a", 1, 0), ("b", 1, 1)]
    # Nothing new: no transaction is committed.
    assert not await commits.commit()
    assert len(transactions.commits) == 1


async def test_positions_never_move_back_when_records_come_again() -> None:
    commits, _table, _raw, transactions = setup({0})
    for offset in (5, 6, 7, 5, 6):  # a seek delivered 5 and 6 again
        commits.applied(0, offset)
    await commits.commit()
    assert transactions.commits == [offsets(p0=8)]


async def test_writes_without_new_records_commit_the_same_position_again() -> None:
    # Pruning writes tombstones with no new event: they must not wait in an open
    # transaction until the broker aborts it.
    commits, table, raw, transactions = setup({0, 1})
    commits.applied(0, 3)
    commits.applied(1, 8)
    await commits.commit()
    table.delete("old", 1)
    await commits.commit()
    assert transactions.commits == [offsets(p0=4, p1=9), offsets(p1=9)]
    assert raw.changelog_topic.sent[-1] == ("old", None, 1)


async def test_a_commit_of_some_partitions_keeps_the_others_writes_for_later() -> None:
    commits, table, raw, transactions = setup({0, 1})
    table.put("a", 1, 0)
    commits.applied(0, 0)
    table.put("b", 2, 1)
    commits.applied(1, 0)
    await commits.commit(partitions={1}, start_new_transaction=False)
    assert transactions.commits == [offsets(p1=1)]
    assert raw.changelog_topic.sent == [("b", 2, 1)]
    assert table.dirty == 1
    await commits.commit()
    assert transactions.commits[-1] == offsets(p0=1)
    assert raw.changelog_topic.sent[-1] == ("a", 1, 0)


async def test_a_revoked_partition_is_forgotten_until_it_is_applied_again() -> None:
    commits, table, raw, transactions = setup({0, 1})
    commits.applied(0, 5)
    commits.applied(1, 5)
    await commits.commit()
    table.put("late", 1, 1)
    commits.forget({1})
    assert table.dirty == 0
    assert 1 not in commits.positions
    # Assigned again later, from an older committed offset: what is applied then
    # is committed, even though this worker once committed further.
    commits.applied(1, 2)
    await commits.commit()
    assert transactions.commits[-1] == offsets(p1=3)
    assert ("late", 1, 1) not in raw.changelog_topic.sent


def test_the_next_offset_to_apply_starts_at_the_assignment_and_follows_the_records() -> None:
    commits, _, _, _ = setup({0})
    assert commits.expected(0) is None
    commits.start(0, 40)  # assigned, committed at 40
    assert commits.expected(0) == 40
    commits.applied(0, 40)
    commits.applied(0, 41)
    assert (commits.expected(0), commits.positions[0]) == (42, 42)
    commits.applied(0, 12)  # a record read again after a seek
    assert (commits.expected(0), commits.positions[0]) == (42, 42)
    commits.forget({0})
    assert commits.expected(0) is None


async def test_no_commit_of_the_assigned_while_the_group_rebalances() -> None:
    # Between the revocation's commit and the assignment a partition's producer is in
    # no transaction: faust's periodic commit must send nothing then.
    rebalancing = [True]
    commits, table, raw, transactions = setup({0, 1}, rebalancing)
    table.put("a", 1, 0)
    commits.applied(0, 3)
    assert not await commits.commit(offsets(p0=4))
    assert transactions.commits == []
    assert raw.changelog_topic.sent == []
    # The revocation's own commit names its partitions: it goes through.
    assert await commits.commit(partitions={0}, start_new_transaction=False)
    assert transactions.commits == [offsets(p0=4)]
    rebalancing[0] = False
    table.put("b", 1, 1)
    commits.applied(1, 0)
    assert await commits.commit()
    assert transactions.commits[-1] == offsets(p1=1)


async def test_a_flush_cut_short_leaves_no_unretrieved_ack_failure() -> None:
    # The first send's ack fails after the flush gave up on the second send: it is
    # never awaited, and asyncio must not log it as an exception never retrieved.
    import gc

    loop = asyncio.get_running_loop()
    logged: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    pending: list[asyncio.Future[None]] = []

    class Failing(FakeChangelog):
        async def send(
            self, topic: str, key: Any, value: Any, partition: int, *_: Any
        ) -> asyncio.Future[None]:
            if pending:
                raise RuntimeError("producer in no transaction")
            ack: asyncio.Future[None] = loop.create_future()
            pending.append(ack)
            return ack

    try:
        table = WriteBehindTable(FakeTable(changelog_topic=Failing()))
        table.put("a", 1, 0)
        table.put("b", 2, 0)
        with pytest.raises(RuntimeError):
            await table.send_dirty({0})
        pending.pop().set_exception(RuntimeError("fenced"))
        await asyncio.sleep(0)  # the done callbacks run
        gc.collect()
        assert not [c for c in logged if "never retrieved" in c.get("message", "")]
    finally:
        loop.set_exception_handler(previous)
