"""Pieces every aiokafka processor's loop shares: starting clients, resuming at checkpoints.

The processors keep their positions in PostgreSQL (committed with what they
derived), not in Kafka's group offsets; so on every assignment each partition
is sought to its stored checkpoint (:class:`SeekToCheckpoints`). A processor is
ready (``/health/ready``) only while it holds its assignment
(:class:`TrackAssignment`) and knows its lag, the end of each of its
partitions (:func:`lag_known`); its consumer is a static group member
(:mod:`consumers.runtime.membership`), so a restarted process takes its partitions
back at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from consumers.runtime import membership
from consumers.runtime.membership import leave_on_stop
from eventfold.backoff import Backoff, retrying
from eventfold.datakeys import Sealer
from eventfold.kafka import make_producer
from eventfold.metrics import Metrics
from eventfold.publisher import Publisher
from eventfold.settings import Settings

log = logging.getLogger("eventfold.kafka")


class CheckpointOwner(Protocol):
    """A processor that can position partitions at its stored checkpoints."""

    async def seek_to_checkpoints(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> None:
        """Seek ``partitions`` to their checkpoints (the start when none)."""


class TrackAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Sets ``ready`` while the consumer holds a settled assignment.

    Cleared when a rebalance begins (partitions are revoked, or the first join),
    set once the new assignment is in place, after :meth:`assigned` (a seek to
    the checkpoints). An empty assignment counts: a member with nothing to do
    (more members than partitions) does its job.
    """

    def __init__(self, ready: asyncio.Event) -> None:
        self.ready = ready

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Not ready until the rebalance has assigned partitions again."""
        self.ready.clear()
        await self.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Ready once :meth:`assigned` is done (also if it failed: the batches skip what
        their checkpoints say is applied, so consuming from Kafka's hints is safe)."""
        try:
            await self.assigned(assigned)
        finally:
            self.ready.set()

    async def revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """What a processor does with revoked partitions (nothing by default)."""

    async def assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """What a processor does with assigned partitions before it is ready (nothing)."""


class SeekToCheckpoints(TrackAssignment):
    """Resumes assigned partitions at the owner's checkpoints.

    ``on_revoked`` gets the revoked partition numbers, for a processor holding
    per-partition state it must drop (the archiver's open segments); others have
    nothing to flush, since each batch committed its own checkpoints.
    """

    def __init__(
        self,
        owner: CheckpointOwner,
        consumer: AIOKafkaConsumer,
        ready: asyncio.Event,
        on_revoked: Callable[[list[int]], None] | None = None,
    ) -> None:
        super().__init__(ready)
        self._owner = owner
        self._consumer = consumer
        self._on_revoked = on_revoked

    async def revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Hand the revoked partitions to ``on_revoked``, if any."""
        if self._on_revoked is not None:
            self._on_revoked([tp.partition for tp in revoked])

    async def assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Resume every assigned partition from its PostgreSQL checkpoint."""
        await self._owner.seek_to_checkpoints(self._consumer, assigned)


class MemberLoop:
    """The run loop of an aiokafka processor, as a static member of its consumer group.

    :meth:`run` holds a slot of ``group`` (:mod:`consumers.runtime.membership`) while the
    processor's :meth:`_run` consumes; ``ready`` is set by the processor's
    rebalance listener (:class:`TrackAssignment`) and cleared once the loop ends.
    ``_run`` sets :attr:`consumer` to its consumer, whose fetches tell the lag.
    """

    settings: Settings
    group: str
    ready: asyncio.Event
    #: The running loop's consumer (None while none runs): readiness reads its offsets.
    consumer: AIOKafkaConsumer | None = None

    def is_ready(self) -> bool:
        """Whether the processor holds its partitions, consumes and knows its lag."""
        consumer = self.consumer
        return self.ready.is_set() and consumer is not None and lag_known(consumer)

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Consume until ``stop`` is set (or, in ``burst`` mode, until caught up)."""
        stop = stop or asyncio.Event()
        async with membership.claim(self.settings.database_url, self.group, stop) as member:
            try:
                await self._run(stop, burst, member)
            finally:
                self.ready.clear()
                self.consumer = None

    async def _run(self, stop: asyncio.Event, burst: bool, member: membership.Member) -> None:
        """The processor's loop; its consumer joins as ``member.instance_id``."""
        raise NotImplementedError


def lag_known(consumer: AIOKafkaConsumer) -> bool:
    """Whether the end of every partition the consumer holds is known (its lag with it).

    The end (high watermark) comes with each fetch answer, empty ones too, so
    it is known within one fetch wait of an assignment; until then the
    processor cannot say how far behind it is, and is not ready. A member with
    no partitions knows all it needs to.
    """
    return all(consumer.highwater(tp) is not None for tp in consumer.assignment())


def seek_to_stored(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], stored: dict[int, int]
) -> None:
    """Position each of ``partitions`` at its stored next offset, or at the log's start.

    The start is offset 0: on a log whose beginning is gone the consumer resets
    it to the earliest offset (``auto_offset_reset``). ``seek_to_beginning``
    would do the same but waits for a fetch round (about 0.5 s) per call: with
    8 partitions new to a processor, 4 s before it was ready.
    """
    for tp in partitions:
        consumer.seek(tp, stored.get(tp.partition, 0))


async def caught_up(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer's position is at the end of every partition it holds.

    False while it holds none, or when a rebalance takes one away meanwhile
    (its position is then unknown: asking for it raised and stopped the processor).
    """
    assigned = consumer.assignment()
    if not assigned:
        return False
    try:
        ends = await consumer.end_offsets(list(assigned))
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
    except IllegalStateError:
        return False
    return True


async def start_publisher(
    settings: Settings,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    client_id: str,
    sealer: Sealer | None = None,
) -> Publisher:
    """A processor's :class:`~eventfold.publisher.Publisher` to the events topic, started:
    retrying while Kafka is away, and not at all once ``stop`` is set (the caller's
    loop then ends at once; it stops the publisher either way). A processor that may
    write records passes a ``sealer`` (:class:`~eventfold.datakeys.Sealer`)."""
    publisher = Publisher(
        functools.partial(make_producer, settings, client_id=client_id),
        None,
        metrics,
        topic=settings.events_topic,
        sealer=sealer,
    )
    try:
        await retrying(
            publisher.start,
            retry_on=lambda exc: True,
            backoff=Backoff(0.5, 5.0),
            what="kafka not reachable",
            stop=stop,
        )
    except Exception:
        if not stop.is_set():
            raise
    return publisher


async def start_with_retry(
    client: AIOKafkaConsumer | AIOKafkaProducer, stop: asyncio.Event
) -> None:
    """Start a Kafka client, retrying with backoff while the broker is unreachable.

    A consumer that is a static group member leaves its group when it stops
    (:func:`consumers.runtime.membership.leave_on_stop`).
    """
    await retrying(
        client.start,
        retry_on=lambda exc: isinstance(exc, KafkaError),
        backoff=Backoff(0.5, 10.0),
        what="kafka not reachable",
        stop=stop,
    )
    if isinstance(client, AIOKafkaConsumer):
        leave_on_stop(client)
