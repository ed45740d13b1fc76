"""Kafka's committed offsets for the projector's group: a hint for lag tools only.

The projector's positions live in PostgreSQL beside the projection (the truth it
seeks to on every assignment). Kafka's committed offsets are written so that
lag tools reading the group see it move: at most every :data:`HINT_INTERVAL`,
one commit at a time, in the background while the next batches are folded, and
once more when the projector stops. Sent after every batch, live traffic's
small batches each paid for an offset commit (the projector's and the broker's
CPU, a write to ``__consumer_offsets``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger("eventfold.projector")

#: Seconds between two offset hints at least.
HINT_INTERVAL = 1.0


class OffsetHints:
    """The positions applied since the last hint, and the hint in flight."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._due: dict[TopicPartition, OffsetAndMetadata] = {}
        self._task: asyncio.Task[None] | None = None
        self._sent_at = -HINT_INTERVAL

    def note(self, consumer: AIOKafkaConsumer, positions: dict[int, int]) -> None:
        """Remember a batch's ``{partition: next_offset}``; send them if a hint is due."""
        for p, o in positions.items():
            self._due[TopicPartition(self._topic, p)] = OffsetAndMetadata(o, "")
        if self._task is not None:
            if not self._task.done():
                return  # one at a time
            task, self._task = self._task, None
            task.result()  # an error _commit does not expect is the caller's
        if time.monotonic() - self._sent_at >= HINT_INTERVAL:
            self._send(consumer)

    async def finish(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the hint in flight, then send the last positions (bounded)."""
        await self._wait()
        if self._due:
            self._send(consumer)
            await self._wait()

    def _send(self, consumer: AIOKafkaConsumer) -> None:
        offsets, self._due = self._due, {}
        self._sent_at = time.monotonic()
        self._task = asyncio.create_task(_commit(consumer, offsets), name="offset-hint")

    async def _wait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task


async def _commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
) -> None:
    try:
        await asyncio.wait_for(consumer.commit(offsets), 10)
    except (KafkaError, TimeoutError) as exc:
        log.info("offset hint not committed", extra={"error": repr(exc)})
