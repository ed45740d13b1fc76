"""Many keyed records sent as one record batch per partition, with each record's position.

``AIOKafkaProducer.send`` costs ~17 µs of Python per record (a future and a
metadata object per record, the accumulator's bookkeeping); appending the same
records to a ``BatchBuilder`` per partition and handing each builder over with
``send_batch`` costs ~7 µs (``benchmarks/README.md``, *batched send*). The
partition of each record is the one ``send`` would pick
(:func:`eventfold.kafka.partition_for_key`), so the records of one key stay on
one partition, in order, whichever way they were sent.

Single records are better off with ``send``: concurrent requests' records share
the accumulator's open batch, where a builder of one record would travel alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder

from eventfold.kafka import partition_for_key

#: A record's key, value and headers.
Record = tuple[bytes, bytes, Sequence[tuple[str, bytes]]]


async def send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Record]
) -> list[tuple[int, int]]:
    """Send ``records`` in order; return each one's ``(partition, offset)`` once acknowledged.

    A builder that fills up (the producer's ``max_batch_size``) is handed over
    and a new one started, so a partition's records keep their order across
    batches. ``send_batch`` waits until the partition has no batch pending in
    the producer; under a steady stream of other requests' ``send``s there
    nearly always is one, and aiokafka's wait then runs out early (it subtracts
    the time waited so far again on every turn) with ``KafkaTimeoutError``,
    before the batch was queued. That partition's records then go through
    ``send`` (appended behind what is queued, so still in order): nothing is
    lost or sent twice, and concurrent single-event requests are not held up.
    Any other failure is raised (the caller retries the whole, as after a
    failed ``send``: the projector's dedup by event id absorbs a record written
    twice).
    """
    partitions = sorted(await producer.partitions_for(topic))
    chains: dict[int, list[_Batch]] = {}  # per partition, its batches in order
    for i, (key, value, headers) in enumerate(records):
        partition = partition_for_key(key, partitions, partitions)
        chain = chains.setdefault(partition, [])
        meta = None
        if chain:
            meta = chain[-1].builder.append(key=key, value=value, timestamp=None, headers=headers)
        if meta is None:  # none yet, or the last one is full: start the next
            chain.append(_Batch(partition, producer.create_batch()))
            meta = chain[-1].builder.append(key=key, value=value, timestamp=None, headers=headers)
            assert meta is not None, "an empty batch takes a record of any size"
        chain[-1].records.append(i)
        chain[-1].relative.append(meta.offset)
    positions: list[tuple[int, int]] = [(-1, -1)] * len(records)
    queued: list[tuple[_Batch, asyncio.Future[Any]]] = []
    singles: list[tuple[int, asyncio.Future[Any]]] = []
    for partition, chain in chains.items():
        alone = False  # once a batch of the partition could not be queued, so is the rest
        for batch in chain:
            if not alone:
                try:
                    # Not closed: a builder handed over open is the partition's open batch
                    # until the sender takes it, so other requests' sends join it instead
                    # of each waiting for it to drain. Their records follow ours in it.
                    future = await producer.send_batch(batch.builder, topic, partition=partition)
                except KafkaTimeoutError:
                    alone = True
                else:
                    queued.append((batch, future))
                    continue
            for i in batch.records:
                key, value, headers = records[i]
                sent = await producer.send(
                    topic, value=value, key=key, headers=headers, partition=partition
                )
                singles.append((i, sent))
    acked = await asyncio.gather(*(f for _, f in queued), *(f for _, f in singles))
    for (batch, _), meta in zip(queued, acked, strict=False):
        for i, relative in zip(batch.records, batch.relative, strict=True):
            positions[i] = (batch.partition, meta.offset + relative)
    for (i, _), meta in zip(singles, acked[len(queued) :], strict=True):
        positions[i] = (meta.partition, meta.offset)
    return positions


@dataclass(slots=True)
class _Batch:
    """One record batch being built for a partition, and which records are in it."""

    partition: int
    builder: BatchBuilder
    #: Indexes (in the caller's ``records``) of the records appended, in order.
    records: list[int] = field(default_factory=list)
    #: Their offsets relative to the batch's base offset.
    relative: list[int] = field(default_factory=list)
