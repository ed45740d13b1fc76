"""Pieces every aiokafka processor's loop shares: starting clients, resuming at checkpoints.

The processors keep their positions in PostgreSQL (committed with what they
derived), not in Kafka's group offsets; so on every assignment each partition
is sought to its stored checkpoint (:class:`SeekToCheckpoints`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger("eventfold.kafka")


class CheckpointOwner(Protocol):
    """A processor that can position partitions at its stored checkpoints."""

    async def seek_to_checkpoints(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> None:
        """Seek ``partitions`` to their checkpoints (the start when none)."""


class SeekToCheckpoints(ConsumerRebalanceListener):  # type: ignore[misc]
    """Resumes assigned partitions at the owner's checkpoints.

    ``on_revoked`` gets the revoked partition numbers, for a processor holding
    per-partition state it must drop (the archiver's open segments); others have
    nothing to flush, since each batch committed its own checkpoints.
    """

    def __init__(
        self,
        owner: CheckpointOwner,
        consumer: AIOKafkaConsumer,
        on_revoked: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._owner = owner
        self._consumer = consumer
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Hand the revoked partitions to ``on_revoked``, if any."""
        if self._on_revoked is not None:
            self._on_revoked([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Resume every assigned partition from its PostgreSQL checkpoint."""
        await self._owner.seek_to_checkpoints(self._consumer, assigned)


async def start_with_retry(
    client: AIOKafkaConsumer | AIOKafkaProducer, stop: asyncio.Event
) -> None:
    """Start a Kafka client, retrying with backoff while the broker is unreachable."""
    delay = 0.5
    while True:
        try:
            await client.start()
            return
        except KafkaError as exc:
            if stop.is_set():
                raise
            log.warning("kafka not reachable, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
            delay = min(delay * 2, 10.0)
