"""The analytics processor (faust-streaming) on this machine: events/s per worker and
the delay from an event to its count being readable in Redis. Writes
``benchmarks/results/<date>-analytics.json`` (with its commit); the suite runs
:func:`measure` as its analytics phase.

Produces ``--events`` events of a few tenants into a private topic, runs one
``Analytics`` worker in this process until it has processed them all (throughput),
then publishes ``--probes`` single events one at a time and measures produce →
count visible in the tenant's Redis hash (delay). ``--profile FILE`` writes a
cProfile of the throughput phase.

    .venv/bin/python -m benchmarks.analytics [--events 20000] [--probes 20] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from benchmarks import provenance
from benchmarks.private import private_settings
from consumers.analytics.processor import Analytics
from devstack import ensure_topics
from eventfold.analytics_windows import index_key, window_key, window_start
from eventfold.clients import redis_client
from eventfold.metrics import Metrics


def _event(tenant: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"{tenant}-{i}-{uuid.uuid4().hex[:6]}",
            "source": "bench",
            "type": ("record.upserted", "record.patched", "order.placed")[i % 3],
            "subject": f"{('orders', 'users')[i % 2]}/{i % 500}",
            "tenant": tenant,
            "data": {"i": i},
        }
    )


#: How long the worker may take to apply the events before the run gives up.
DEADLINE_S = 600


async def measure(events: int, probes: int = 20, profile: str | None = None) -> dict[str, Any]:
    """Run the benchmark; its figures (throughput of one worker, event → count delay)."""
    run = uuid.uuid4().hex[:8]
    settings = private_settings(run, partitions=4)
    await ensure_topics(settings)
    tenants = [f"bench{run}t{n}" for n in range(4)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    for i in range(events):
        t = tenants[i % len(tenants)]
        await producer.send(settings.events_topic, _event(t, i), key=f"{t}/{i % 500}".encode())
    await producer.flush()

    worker = Analytics(settings, None, Metrics())
    stop = asyncio.Event()
    prof = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if prof:
        prof.enable()
    task = asyncio.create_task(worker.run(stop))
    first: float | None = None
    deadline = time.monotonic() + DEADLINE_S
    while sum(worker.commits.positions.values()) < events:
        if first is None and worker.commits.positions:
            first = time.perf_counter()
        if time.monotonic() > deadline:
            stop.set()
            raise TimeoutError(f"the worker applied {dict(worker.commits.positions)} of {events}")
        await asyncio.sleep(0.01)
    done = time.perf_counter()
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    redis = redis_client(settings)
    delays: list[float] = []
    keys: set[str] = set()
    for n in range(probes):
        # Apart by more than the copy interval: each probe finds the worker idle.
        await asyncio.sleep(settings.analytics_flush_ms / 1000 * 1.5)
        t = tenants[0]
        value = orjson.dumps(
            {"specversion": "1.0", "id": f"probe-{n}-{run}", "source": "bench",
             "type": "probe.sent", "subject": "probe/1", "tenant": t}
        )  # fmt: skip
        sent, wall = time.perf_counter(), time.time()
        await producer.send_and_wait(settings.events_topic, value, key=f"{t}/probe/1".encode())
        # A probe counts in the hour of its log time: the hour at its send, or the next
        # when one began meanwhile; the probes before it in the hours they fell in.
        keys |= {window_key(t, "1h", window_start(x, 3600)) for x in (wall, time.time())}
        deadline = time.monotonic() + 60
        while True:
            total = 0
            for key in keys:
                fields = await redis.hgetall(key)
                total += sum(int(v) for f, v in fields.items() if f.startswith(b"probe.sent"))
            if total >= n + 1:
                break
            if time.monotonic() > deadline:
                stop.set()
                raise TimeoutError(f"probe {n} not counted in Redis within 60 s")
            await asyncio.sleep(0.002)
        delays.append(time.perf_counter() - sent)
    stop.set()
    await task
    await producer.stop()
    for t in tenants:
        for w in ("1m", "1h"):
            await redis.delete(index_key(t, w))
    await redis.aclose()
    busy = done - (first or started)
    return {
        "events": events,
        "partitions": 4,
        "startup_s": round((first or started) - started, 2),
        "events_per_second": round(events / busy),
        "probes": probes,
        "delay_ms": {
            "p50": round(statistics.median(delays) * 1000, 1),
            "max": round(max(delays) * 1000, 1),
        },
    }


def main() -> None:
    """Parse arguments, run, print the figures and write ``results/<date>-analytics.json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--profile")
    args = parser.parse_args()
    prov = provenance.stamp()
    result = asyncio.run(measure(args.events, args.probes, args.profile))
    doc = {"benchmark": "analytics", "provenance": prov, "args": vars(args), "analytics": result}
    path = provenance.save(doc, "analytics")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {path}")


if __name__ == "__main__":
    main()
