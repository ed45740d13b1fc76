"""Write-behind faust tables whose changelog is complete before every offset commit.

faust sends a table write to its changelog through a producer buffer that a
background task drains one message at a time, and its ``exactly_once`` commit
does not wait for that buffer: one event's writes can straddle a transaction
boundary, so a worker killed right after a commit can lose a write of an event
whose offset that commit already covered (the lost count issue 9's SIGKILL test
found). It also costs one Kafka message, one buffer round and one transaction
lock per write: most of the processor's time at the old 500-800 events/s.

So the processor owns its tables' writes:

- a write updates the table's local store at once and marks the key dirty
  (several writes of a hot counter between two commits become one message);
- :func:`fence_commits` makes every transaction commit first send the dirty
  keys' current values to the changelog partition each was written from and
  wait for the broker's acknowledgements: the transaction then holds every
  write of every event whose offset it commits. Writes of events processed
  after the offsets were taken ride along in the same transaction; those events
  are re-delivered after a crash, which the counters detect by offset.

Restore on start or rebalance is faust's own: the changelog is read back into
the same local store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

#: ``(partition, value)``; value None is a deletion (a changelog tombstone).
_Pending = tuple[int, Any]


class WriteBehindTable:
    """A faust table written locally at once and to its changelog at commit time."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._dirty: dict[Any, _Pending] = {}

    def get(self, key: Any) -> Any:
        """The current value of ``key`` (None when absent)."""
        return self.table.data.get(key)

    def put(self, key: Any, value: Any, partition: int) -> None:
        """Set ``key``; ``partition`` is the source partition, the changelog partition too."""
        self.table.data[key] = value
        self._dirty[key] = (partition, value)

    def delete(self, key: Any, partition: int) -> None:
        """Remove ``key`` (a tombstone in changelog partition ``partition``)."""
        self.table.data.pop(key, None)
        self._dirty[key] = (partition, None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """A snapshot of the local entries (every assigned partition)."""
        return iter(list(self.table.data.items()))

    def __len__(self) -> int:
        return len(self.table.data)

    @property
    def dirty(self) -> int:
        """Writes not yet sent to the changelog."""
        return len(self._dirty)

    async def send_dirty(self, assigned: set[int]) -> list[Awaitable[Any]]:
        """Send every dirty key to its changelog partition; the broker acks to await.

        Keys of partitions no longer ``assigned`` are dropped: their events are
        processed again by the partition's new owner from its committed offset.
        """
        dirty, self._dirty = self._dirty, {}
        topic = self.table.changelog_topic
        acks: list[Awaitable[Any]] = []
        for key, (partition, value) in dirty.items():
            if partition not in assigned:
                continue
            acks.append(
                await topic.send(
                    key=key,
                    value=value,
                    partition=partition,
                    key_serializer=self.table.key_serializer,
                    value_serializer="raw" if value is None else self.table.value_serializer,
                    force=True,  # never attached to an event: sent now, in this transaction
                )
            )
        return acks


async def flush_tables(tables: list[WriteBehindTable], assigned: set[int]) -> None:
    """Send the dirty keys of ``tables`` and wait until the broker acknowledged them all."""
    acks: list[Awaitable[Any]] = []
    for table in tables:
        acks.extend(await table.send_dirty(assigned))
    if acks:
        await asyncio.gather(*acks)


def fence_commits(consumer: Any, before_commit: Callable[[], Awaitable[None]]) -> None:
    """Make each transaction commit of the faust ``consumer`` await ``before_commit()`` first.

    faust has no pre-commit hook; its consumer commits every transaction (the
    periodic commit and the one ending a transaction at a rebalance) through
    ``consumer.transactions.commit``, so that method is wrapped on this instance.
    """
    transactions = consumer.transactions
    commit = transactions.commit

    async def fenced(offsets: Any, start_new_transaction: bool = True) -> Any:
        await before_commit()
        return await commit(offsets, start_new_transaction=start_new_transaction)

    transactions.commit = fenced
