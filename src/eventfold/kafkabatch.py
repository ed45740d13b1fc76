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
from aiokafka.producer.message_accumulator import BatchBuilder

from eventfold.kafka import partition_for_key

#: A record's key, value and headers.
Record = tuple[bytes, bytes, Sequence[tuple[str, bytes]]]


async def send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Record]
) -> list[tuple[int, int]]:
    """Send ``records`` in order; return each one's ``(partition, offset)`` once acknowledged.

    A builder that fills up (the producer's ``max_batch_size``) is sent and a
    new one started, so a partition's records keep their order across batches.
    Raises what the first failed batch raised (the caller retries the whole,
    as after a failed ``send``: the projector's dedup by event id absorbs a
    record written twice).
    """
    partitions = sorted(await producer.partitions_for(topic))
    open_: dict[int, BatchBuilder] = {}
    full: list[tuple[int, BatchBuilder]] = []
    # Per record: its partition, which of that partition's builders, its place in it.
    placed: list[tuple[int, int, int]] = []
    built: dict[int, int] = {}  # builders started per partition
    for key, value, headers in records:
        partition = partition_for_key(key, partitions, partitions)
        builder = open_.get(partition)
        meta = None
        if builder is not None:
            meta = builder.append(key=key, value=value, timestamp=None, headers=headers)
            if meta is None:  # full: send it as it is, start the next
                full.append((partition, builder))
        if meta is None:
            builder = open_[partition] = producer.create_batch()
            built[partition] = built.get(partition, 0) + 1
            meta = builder.append(key=key, value=value, timestamp=None, headers=headers)
            if meta is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        placed.append((partition, built[partition] - 1, meta.offset))
    futures: dict[tuple[int, int], asyncio.Future[Any]] = {}
    index: dict[int, int] = {}
    for partition, builder in [*full, *open_.items()]:
        builder.close()
        n = index.get(partition, 0)
        index[partition] = n + 1
        futures[(partition, n)] = await producer.send_batch(builder, topic, partition=partition)
    # Builders of one partition were sent in the order they were filled: ``full``
    # holds each partition's earlier ones in order, ``open_`` its last.
    metas = dict(zip(futures, await asyncio.gather(*futures.values()), strict=True))
    return [(p, metas[(p, b)].offset + relative) for p, b, relative in placed]
