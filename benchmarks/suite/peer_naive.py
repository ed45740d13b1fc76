"""Peer: the day-one consumer, aiokafka + asyncpg, one event per transaction.

    python -m benchmarks.suite.peer_naive --bootstrap … --topic … --dsn …

Reads the topic from the beginning in its own consumer group, applies each
event with the shared :mod:`.sink` (auto-committed offsets, as the tutorials
do) and stops when it reaches the end offsets seen at start. Prints one JSON
line: events consumed and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.suite.sink import apply_event, ddl

SCHEMA = "peer_naive"


async def run(bootstrap: str, topic: str, dsn: str) -> dict[str, Any]:
    """Consume ``topic`` to its current end, one transaction per event."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(ddl(SCHEMA))
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"peer-naive-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest", enable_auto_commit=True,
    )  # fmt: skip
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(parts)
        total = sum(ends.values())
        done = 0
        t0 = time.perf_counter()
        async for msg in consumer:
            await apply_event(conn, SCHEMA, orjson.loads(msg.value))
            done += 1
            if done >= total:
                break
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
        await conn.close()
    return {"events": done, "seconds": round(elapsed, 3),
            "events_per_second": round(done / elapsed, 1)}  # fmt: skip


def main() -> None:
    """Parse arguments, run, print the JSON result."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--dsn", required=True)
    args = p.parse_args()
    out = asyncio.run(run(args.bootstrap, args.topic, args.dsn))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
