"""Peer: a faust-streaming agent with the same sink code.

    python -m benchmarks.suite.peer_faust --bootstrap … --topic … --dsn … --expect N --partitions P

A faust app (memory store, no web server) whose agent applies each event with
the shared :mod:`.sink`, one transaction per event; when it has consumed as
many messages as the caller says the topic holds it prints one JSON line and stops.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import asyncpg
import faust
import orjson

from benchmarks.suite.sink import apply_event, ddl

SCHEMA = "peer_faust"


def main() -> None:
    """Build the app, run its worker until the topic is consumed, print the result."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--expect", type=int, required=True, help="messages in the topic")
    p.add_argument("--partitions", type=int, required=True)
    args = p.parse_args()
    total, partitions = args.expect, args.partitions

    app = faust.App(
        f"peer-faust-{uuid.uuid4().hex[:6]}", broker=f"kafka://{args.bootstrap}",
        store="memory://", web_enabled=False, topic_partitions=partitions,
        datadir=tempfile.mkdtemp(prefix="peer-faust-"),
        consumer_auto_offset_reset="earliest", topic_disable_leader=True,
    )  # fmt: skip
    topic = app.topic(args.topic, value_serializer="raw", partitions=partitions)
    state: dict[str, Any] = {"done": 0, "t0": None}

    @app.agent(topic)  # type: ignore[misc]
    async def sink(stream: Any) -> None:
        conn = await asyncpg.connect(args.dsn)
        await conn.execute(ddl(SCHEMA))
        async for value in stream:
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            await apply_event(conn, SCHEMA, orjson.loads(value))
            state["done"] += 1
            if state["done"] >= total:
                elapsed = time.perf_counter() - state["t0"]
                out = {"events": state["done"], "seconds": round(elapsed, 3),
                       "events_per_second": round(state["done"] / elapsed, 1)}  # fmt: skip
                sys.stdout.write(orjson.dumps(out).decode() + "\n")
                sys.stdout.flush()
                os._exit(0)  # the measurement is done; faust's shutdown is not measured

    app.main  # noqa: B018 - touch: faust finalises the app lazily
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
