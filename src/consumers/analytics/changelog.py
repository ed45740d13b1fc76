"""Write-behind faust tables, and transactions that commit what the processor applied.

faust sends a table write to its changelog through a producer buffer that a
background task drains one message at a time, and its ``exactly_once`` commit
does not wait for that buffer: one event's writes can straddle a transaction
boundary, so a worker killed right after a commit can lose a write of an event
whose offset that commit already covered (the lost count issue 9's SIGKILL test
found). It also costs one Kafka message, one buffer round and one transaction
lock per write: most of the processor's time at the old 500-800 events/s.

Nor are the offsets faust commits trustworthy: it derives them from its own
bookkeeping of acknowledged offsets and "gaps", which the seek to the committed
offsets at the end of a recovery can corrupt while records are already flowing.
Seen in the SIGKILL test: a restarted worker that had applied a partition to
its end committed that partition one offset per commit (every offset counted
twice in faust's list), so it never caught up; offsets filled in as a "gap" are
committed without their records ever reaching the processor.

So the processor owns both its writes and its offsets:

- a write updates the table's local store at once and marks the key dirty
  (several writes of a hot counter between two commits become one message);
- :class:`OwnedCommits` replaces faust's transaction commit: it takes the
  positions the processor applied, sends the dirty keys' current values to the
  changelog partition each was written from, waits for the broker's
  acknowledgements, and commits exactly those positions in the transaction.
  Each transaction holds every write of every event whose offset it commits;
  writes of events applied after the positions were taken ride along, and
  those events are re-delivered after a crash, which the counters detect by
  offset.

Restore on start or rebalance is faust's own (the changelog is read back into
the same local store) except for where it stops: with transactions faust takes
a changelog's end from the consumer's cached "last stable offset", which is
None until a fetch answer for that partition came in. A restarted worker then
restored nothing, or stopped at whatever the first fetch had seen, and counted
on from the committed offsets with its tables short: the lost counts of the
SIGKILL test. :mod:`.recovery` asks the broker instead, and ends each restore at
the changelog's last committed record (not at a transaction marker faust waits
10 s for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiokafka import TopicPartition

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

    def forget(self, partitions: set[int]) -> None:
        """Drop the unsent writes of ``partitions`` (revoked: the new owner redoes them)."""
        self._dirty = {k: v for k, v in self._dirty.items() if v[0] not in partitions}

    @property
    def dirty(self) -> int:
        """Writes not yet sent to the changelog."""
        return len(self._dirty)

    async def send_dirty(self, partitions: set[int]) -> list[tuple[int, Awaitable[Any]]]:
        """Send the dirty keys of ``partitions`` to the changelog: ``(partition, ack to await)``.

        Keys of other partitions stay dirty for a later commit of theirs.
        """
        dirty: dict[Any, _Pending] = {}
        for key, pending in list(self._dirty.items()):
            if pending[0] in partitions:
                dirty[key] = self._dirty.pop(key)
        topic = self.table.changelog_topic
        name = topic.get_topic_name()
        # In a transaction (exactly_once) faust's producer is the transaction manager:
        # it picks the partition's transactional producer.
        producer = await topic.app.maybe_start_producer()
        key_serializer, value_serializer = self.table.key_serializer, self.table.value_serializer
        acks: list[tuple[int, Awaitable[Any]]] = []
        for key, (partition, value) in dirty.items():
            # The bytes Topic.send(force=True) sends (its serialisers, no headers), handed
            # to the producer directly: its FutureMessage, sensors and callbacks per
            # message were a fifth of the worker's CPU with one write per event.
            key_bytes, headers = topic.prepare_key(key, key_serializer, None, {})
            value_bytes = None
            if value is not None:
                value_bytes, headers = topic.prepare_value(value, value_serializer, None, headers)
            ack = await producer.send(
                name, key_bytes, value_bytes, partition, None, headers or None
            )
            if isinstance(ack, asyncio.Future):
                ack.add_done_callback(_seen)
            acks.append((partition, ack))
        return acks


def _seen(ack: asyncio.Future[Any]) -> None:
    """Mark a failed acknowledgement as seen. A flush cut short by an error (the worker
    then starts again) never awaits the acks of the sends it made before it; each
    failed later, when the new worker's producer fenced the old one, and asyncio
    logged "Future exception was never retrieved" for every one. An ack that is
    awaited still raises its error."""
    if not ack.cancelled():
        ack.exception()


async def flush_tables(tables: list[WriteBehindTable], partitions: set[int]) -> set[int]:
    """Send the dirty keys of ``partitions``, wait for the broker's acks; the partitions written."""
    acks: list[tuple[int, Awaitable[Any]]] = []
    for table in tables:
        acks.extend(await table.send_dirty(partitions))
    if acks:
        await asyncio.gather(*(ack for _, ack in acks))
    return {partition for partition, _ in acks}


class OwnedCommits:
    """The transactions of a faust consumer, committing the positions the processor applied.

    ``applied(partition, offset)`` is called for every record the processor
    folded; :meth:`commit` replaces ``consumer.transactions.commit`` (faust's
    periodic commit and its commit at shutdown call it; the offsets faust
    passes are ignored) and is also called on the processor's own timer, since
    faust calls it only when its bookkeeping finds something to commit.

    A position is "the offset after the last applied", so a commit covers every
    offset below it: the processor applies each partition's records in order
    and checks :meth:`expected` first. A record arriving past the expected
    offset means faust dropped one on the way (see :mod:`.recovery`); applying
    it would let the next commit cover the dropped one, and its counters'
    offsets would then refuse it when read again.
    """

    def __init__(
        self,
        topic: str,
        tables: list[WriteBehindTable],
        assigned: Callable[[], set[int]],
        rebalancing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.topic = topic
        self.tables = tables
        self.assigned = assigned
        self.rebalancing = rebalancing
        #: partition -> next offset to apply: the offsets a commit may cover
        self.positions: dict[int, int] = {}
        #: partition -> the offset this worker last committed
        self.committed: dict[int, int] = {}
        #: partition -> the next offset to apply (from the assignment on)
        self._next: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._commit: Callable[..., Awaitable[Any]] | None = None

    def install(self, consumer: Any) -> None:
        """Take over the transaction commits of the faust ``consumer`` (before it starts).

        faust has no hook for what a commit covers; every transaction commit
        (periodic, and at shutdown) goes through ``consumer.transactions.commit``,
        so that method is replaced on this instance.
        """
        self._commit = consumer.transactions.commit
        consumer.transactions.commit = self.commit

    def start(self, partition: int, offset: int) -> None:
        """The first offset to apply on ``partition`` (assigned: its committed offset)."""
        self._next[partition] = offset

    def expected(self, partition: int) -> int | None:
        """The next offset to apply on ``partition`` (None before :meth:`start`)."""
        return self._next.get(partition)

    def applied(self, partition: int, offset: int) -> None:
        """Record that the record at ``partition``/``offset`` is folded into the tables.

        A seek can deliver records again that were applied already: positions
        never move back.
        """
        if offset >= self.positions.get(partition, 0):
            self.positions[partition] = offset + 1
        if offset >= self._next.get(partition, 0):
            self._next[partition] = offset + 1

    def forget(self, partitions: set[int]) -> None:
        """Drop the positions and unsent writes of ``partitions`` (revoked: a new owner
        takes them on from their committed offsets)."""
        for table in self.tables:
            table.forget(partitions)
        for partition in partitions:
            self.positions.pop(partition, None)
            self.committed.pop(partition, None)
            self._next.pop(partition, None)

    async def commit(
        self, offsets: Any = None, start_new_transaction: bool = True,
        partitions: set[int] | None = None,
    ) -> bool:  # fmt: skip
        """Commit the applied positions of ``partitions`` (default: the assigned) with
        every table write made so far; whether anything was committed.

        A commit of the assigned (faust's periodic one, the processor's timer) is
        skipped while the group rebalances. The revocation's commit (``partitions``
        given) ends those partitions' transactions without beginning new ones, and
        only the assignment begins the kept partitions' next: in between, a
        partition's producer is in no transaction, and faust's periodic commit sent
        changelog writes to it and crashed the consumer (``IllegalOperation``). The
        window lasts until the group's join ends: with a member killed, its session.
        """
        async with self._lock:
            if partitions is None and self.rebalancing():
                return False
            scope = self.assigned() if partitions is None else partitions
            # Positions are taken before any dirty key is sent: every event they
            # cover has its writes in this flush.
            applied = {p: o for p, o in self.positions.items() if p in scope}
            written = await flush_tables(self.tables, scope)
            due = {
                p: o for p, o in applied.items()
                if o > self.committed.get(p, -1) or p in written
            }  # fmt: skip
            if not due:
                return False
            assert self._commit is not None, "install() comes before the consumer starts"
            await self._commit(
                {TopicPartition(self.topic, p): o for p, o in due.items()},
                start_new_transaction=start_new_transaction,
            )
            self.committed.update(due)
            return True
