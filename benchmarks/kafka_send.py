"""Producer CPU per record: ``AIOKafkaProducer.send`` per record vs one batch per partition.

``python -m benchmarks.kafka_send [--rounds 3] [--records 500] [--concurrency 8]``.
On a private topic (8 partitions) of the local broker, with the gateway's own
producer settings (idempotent, ``acks=all``): ``--concurrency`` publishes of
``--records`` keyed ~700-byte records at a time, as the gateway's batch route
sends them, once record by record (``send`` + gather) and once through
:func:`eventfold.kafkabatch.send_batched`, alternating, ``--rounds`` times.
Prints and writes CPU-µs per record (this process: the producer's Python work)
and records/s to ``benchmarks/results/<date>-kafka-send.json``. Then, for
``--mixed-seconds``, batched sends beside 64 tasks sending single records to the
same partitions (the gateway's mixed load): how many fail, and their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks import provenance
from benchmarks.private import private_settings
from devstack import ensure_topics
from eventfold.kafka import make_producer, message_key
from eventfold.kafkabatch import Record, send_batched


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _per_record(producer: AIOKafkaProducer, topic: str, records: list[Record]) -> None:
    futures = [await producer.send(topic, value=v, key=k, headers=h) for k, v, h in records]
    await asyncio.gather(*futures)


async def _batched(producer: AIOKafkaProducer, topic: str, records: list[Record]) -> None:
    await send_batched(producer, topic, records)


async def _mixed(
    producer: AIOKafkaProducer, topic: str, payload: bytes, seconds: float
) -> dict[str, Any]:
    """Batched sends of 200 records (4 at a time) while 64 tasks send single records
    to the same partitions: ``send_batch`` waits for a partition's open batch to
    drain first, so this shows whether it is starved by a steady stream of ``send``s."""
    headers = [("content-type", b"application/cloudevents+json")]
    stop = asyncio.Event()
    singles = 0

    async def single(k: int) -> None:
        nonlocal singles
        i = 0
        while not stop.is_set():
            key = message_key("bench", f"singles/s{k}-{i % 50}", f"s{k}-{i}")
            await (await producer.send(topic, value=payload, key=key, headers=headers))
            singles += 1
            i += 1

    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def batches(j: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            records = [
                (message_key("bench", f"batches/b{j}-{n}-{i}", f"b{j}-{n}-{i}"), payload, headers)
                for i in range(200)
            ]
            n += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(6):  # the gateway's attempt timeout
                    await send_batched(producer, topic, records)
            except Exception as exc:  # counted: the point is whether any fail
                failures.append(type(exc).__name__)
            else:
                latencies.append((time.perf_counter() - started) * 1000)

    senders = [asyncio.create_task(single(k)) for k in range(64)]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(batches(j) for j in range(4)))
    finally:
        stop.set()
        await asyncio.gather(*senders)
    took = time.perf_counter() - started
    latencies.sort()
    return {
        "batched_sends": len(latencies),
        "failed": len(failures),
        "failures": sorted(set(failures)),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "single_records_per_second": round(singles / took),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the two ways of sending; return CPU per record and rate of each round."""
    name = uuid.uuid4().hex[:8]
    settings = private_settings(name, partitions=8)
    await ensure_topics(settings)
    topic = settings.events_topic
    headers = [("content-type", b"application/cloudevents+json")]
    payload = orjson.dumps({"type": "record.upserted", "data": {"pad": "x" * 640}})
    publishes = [
        [
            (message_key("bench", f"orders/o{j}-{i}", f"e{j}-{i}"), payload, headers)
            for i in range(args.records)
        ]
        for j in range(args.concurrency)
    ]
    ways: dict[str, Callable[[AIOKafkaProducer, str, list[Record]], Awaitable[None]]] = {
        "per_record_send": _per_record,
        "send_batched": _batched,
    }
    out: dict[str, Any] = {w: [] for w in ways}
    producer = make_producer(settings, client_id="bench-send")
    await producer.start()
    try:
        for _ in range(args.rounds):
            for way, send in ways.items():
                await asyncio.gather(*(send(producer, topic, p) for p in publishes))  # warm-up
                cpu0, t0 = _cpu(), time.perf_counter()
                for _ in range(args.repeat):
                    await asyncio.gather(*(send(producer, topic, p) for p in publishes))
                cpu, seconds = _cpu() - cpu0, time.perf_counter() - t0
                n = args.repeat * args.concurrency * args.records
                row = {
                    "cpu_us_per_record": round(cpu / n * 1e6, 2),
                    "records_per_second": round(n / seconds),
                }
                out[way].append(row)
                print(f"{way:>16}: {row}", flush=True)
        if args.mixed_seconds > 0:
            out["mixed"] = await _mixed(producer, topic, payload, args.mixed_seconds)
            print(f"           mixed: {out['mixed']}", flush=True)
    finally:
        await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic, settings.dlq_topic])
        finally:
            await admin.close()
    return out


def main() -> None:
    """Parse arguments, run, print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--records", type=int, default=500, help="records per publish")
    p.add_argument("--concurrency", type=int, default=8, help="publishes at a time")
    p.add_argument("--repeat", type=int, default=13, help="measured gathers per round")
    p.add_argument(
        "--mixed-seconds",
        type=float,
        default=20,
        help="batched sends beside 64 single-record senders this long (0: skip)",
    )
    args = p.parse_args()
    prov = provenance.stamp()
    result = asyncio.run(run(args))
    doc = {"benchmark": "kafka-send", "provenance": prov, "args": vars(args), "results": result}
    path = provenance.save(doc, "kafka-send")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
