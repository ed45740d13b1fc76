"""Records sent as one batch per partition land where ``send`` would put them, in order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from eventfold.kafka import partition_for_key
from eventfold.kafkabatch import send_batched
from eventfold.settings import Settings

Found = dict[tuple[int, int], tuple[bytes, bytes, list[tuple[str, bytes]]]]


async def _read(settings: Settings, positions: set[tuple[int, int]]) -> Found:
    """The records at ``positions`` (each partition read from its lowest one)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    found: Found = {}
    try:
        tps = {p: TopicPartition(settings.events_topic, p) for p, _ in positions}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, min(o for q, o in positions if q == p))
        while not positions <= found.keys():
            batches = await consumer.getmany(timeout_ms=5000)
            assert batches, f"missing {sorted(positions - found.keys())[:5]}"
            for msgs in batches.values():
                for m in msgs:
                    assert m.key is not None
                    assert m.value is not None
                    found[(m.partition, m.offset)] = (m.key, m.value, list(m.headers))
    finally:
        await consumer.stop()
    return found


@contextlib.asynccontextmanager
async def _producer(settings: Settings, **config: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started idempotent producer (acks=all, Eventfold's partitioner) with ``config``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        partitioner=partition_for_key,
        **config,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_each_record_is_at_the_position_returned_on_its_keys_partition(
    stack: Settings,
) -> None:
    # Small batches: every partition fills several builders, sent one after another.
    async with _producer(stack, max_batch_size=4096) as producer:
        headers = [("content-type", b"application/cloudevents+json")]
        records = [
            (f"kb/items/i{i % 37}".encode(), f'{{"n":{i},"pad":"{"x" * 300}"}}'.encode(), headers)
            for i in range(600)
        ]
        positions = await send_batched(producer, stack.events_topic, records)
        # A record alone may exceed the batch size: it travels in a builder of its own.
        big = await send_batched(
            producer, stack.events_topic, [(b"kb/items/big", b"y" * 10_000, headers)]
        )

    assert len(positions) == len(records)
    assert len(set(positions)) == len(records)
    found = await _read(stack, set(positions) | set(big))
    for (key, value, _), (partition, offset) in zip(records, positions, strict=True):
        all_partitions = list(range(stack.topic_partitions))
        assert partition == partition_for_key(key, all_partitions, all_partitions)
        assert found[(partition, offset)] == (key, value, headers)
    # One key's records keep the order they were given in.
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for (key, _, _), position in zip(records, positions, strict=True):
        by_key.setdefault(key, []).append(position)
    assert all(pos == sorted(pos) for pos in by_key.values())
    assert found[big[0]][1] == b"y" * 10_000


async def test_a_partition_whose_batch_cannot_be_queued_goes_record_by_record(
    stack: Settings,
) -> None:
    # A lingering batch of another send is pending on the partition: send_batch waits
    # for it to drain and gives up (request timeout) before queuing anything.
    sends = 0

    async with _producer(stack, linger_ms=3000, request_timeout_ms=400) as producer:
        send = producer.send

        async def counted_send(*args: Any, **kwargs: Any) -> Any:
            nonlocal sends
            sends += 1
            return await send(*args, **kwargs)

        headers = [("content-type", b"application/cloudevents+json")]
        key = b"kb/items/lingering"
        first = await producer.send(stack.events_topic, value=b"first", key=key)
        producer.send = counted_send  # type: ignore[method-assign]
        records = [(key, f"n{i}".encode(), headers) for i in range(20)]
        positions = await send_batched(producer, stack.events_topic, records)
        before = await first

    assert sends == 20  # every record went by send, behind the pending batch
    assert [o for _, o in positions] == list(range(before.offset + 1, before.offset + 21))
    found = await _read(stack, set(positions))
    assert [found[pos][1] for pos in positions] == [v for _, v, _ in records]
