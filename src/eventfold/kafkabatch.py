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
    #: Per partition, its builders in order, each with the indexes of its records.
    builders: dict[int, list[tuple[BatchBuilder, list[int], list[int]]]] = {}
    for i, (key, value, headers) in enumerate(records):
        partition = partition_for_key(key, partitions, partitions)
        chain = builders.setdefault(partition, [])
        meta = None
        if chain:
            meta = chain[-1][0].append(key=key, value=value, timestamp=None, headers=headers)
        if meta is None:  # none yet, or the last one is full: start the next
            chain.append((producer.create_batch(), [], []))
            meta = chain[-1][0].append(key=key, value=value, timestamp=None, headers=headers)
            if meta is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        chain[-1][1].append(i)
        chain[-1][2].append(meta.offset)  # relative to the batch's base offset
    positions: list[tuple[int, int] | None] = [None] * len(records)
    batches: list[tuple[int, list[int], list[int], asyncio.Future[Any]]] = []
    singles: list[tuple[int, asyncio.Future[Any]]] = []
    for partition, chain in builders.items():
        queued_alone = False
        for builder, indexes, relative in chain:
            if not queued_alone:
                try:
                    # Not closed: a builder handed over open is the partition's open batch
                    # until the sender takes it, so other requests' sends join it instead
                    # of each waiting for it to drain. Their records follow ours in it.
                    future = await producer.send_batch(builder, topic, partition=partition)
                except KafkaTimeoutError:
                    queued_alone = True  # this and the partition's later builders: by send
                else:
                    batches.append((partition, indexes, relative, future))
                    continue
            for i in indexes:
                key, value, headers = records[i]
                sent = await producer.send(
                    topic, value=value, key=key, headers=headers, partition=partition
                )
                singles.append((i, sent))
    acked = await asyncio.gather(*(f for *_, f in batches), *(f for _, f in singles))
    for (partition, indexes, relative, _), meta in zip(batches, acked, strict=False):
        for i, r in zip(indexes, relative, strict=True):
            positions[i] = (partition, meta.offset + r)
    for (i, _), meta in zip(singles, acked[len(batches) :], strict=True):
        positions[i] = (meta.partition, meta.offset)
    assert all(p is not None for p in positions), "every record was queued one way or the other"
    return [p for p in positions if p is not None]
