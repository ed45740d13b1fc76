"""Crash test: the projector process SIGKILLed at random moments loses nothing, doubles nothing.

50,000 events over three tenants (upserts, merge patches, deletes, conditional
writes, and re-sent duplicates) are folded by a real ``eventfold process
projector`` that is killed five times mid-stream and restarted. Afterwards each
tenant's projection must equal a from-scratch fold of the log, checksum and all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack import ensure_topics
from eventfold.clients import open_pool
from eventfold.fold import Record, apply
from eventfold.settings import Settings
from tests.conftest import free_port

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
TOTAL = 50_000
TENANTS = 3
KEYS = 400
KILLS = 5


def workload(tenants: list[str], rng: random.Random, total: int = TOTAL) -> list[dict[str, Any]]:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = [
        {
            "specversion": "1.0",
            "id": f"tenant.created:{t}",
            "source": "crash",
            "type": "tenant.created",
            "subject": t,
            "tenant": t,
            "time": base.isoformat(),
            "data": {"id": t, "name": t},
        }
        for t in tenants
    ]
    while len(events) < total:
        i = len(events)
        if i > 100 and rng.random() < 0.03:
            events.append(events[rng.randrange(len(tenants), i)])  # a re-sent duplicate
            continue
        t = tenants[rng.randrange(len(tenants))]
        key = int(rng.paretovariate(1.2)) % KEYS  # a few hot records
        roll = rng.random()
        kind = (
            "record.upserted"
            if roll < 0.35
            else "record.patched"
            if roll < 0.9
            else "record.deleted"
        )
        ev: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "crash",
            "type": kind,
            "subject": f"c/k{key}",
            "tenant": t,
            "time": (base + timedelta(milliseconds=i)).isoformat(),
        }
        if kind == "record.upserted":
            ev["data"] = {"i": i, "v": rng.randrange(100)}
        elif kind == "record.patched":
            ev["data"] = {f"f{rng.randrange(5)}": rng.choice([i, None, "x" * 20])}
        if rng.random() < 0.05:
            ev["expectedversion"] = rng.randrange(4)
        events.append(ev)
    return events


def reference_fold(log: list[tuple[int, int, dict[str, Any]]]) -> dict[str, dict[Any, Record]]:
    """The fold of the log in partition order per key, duplicates by id skipped."""
    state: dict[str, dict[Any, Record]] = {}
    seen: set[tuple[str, str]] = set()
    for _, _, ev in sorted(log, key=lambda x: (x[0], x[1])):
        t = ev["tenant"]
        if (t, ev["id"]) in seen:
            continue
        seen.add((t, ev["id"]))
        records = state.setdefault(t, {})
        if not ev["type"].startswith("record."):
            continue
        collection, _, rid = ev["subject"].partition("/")
        at = datetime.fromisoformat(ev["time"])
        new, outcome = apply(
            records.get((collection, rid)),
            ev["type"],
            ev.get("data"),
            at=at,
            expected_version=ev.get("expectedversion"),
        )
        if outcome.status == "applied" and new is not None:
            records[(collection, rid)] = new
    return state


def checksum(rows: list[tuple[Any, ...]]) -> str:
    return hashlib.sha256(orjson.dumps(sorted(rows), option=orjson.OPT_SORT_KEYS)).hexdigest()


async def crash_lane(settings: Settings, run: str) -> Settings:
    """``settings`` on a topic and consumer groups of run ``run``'s own (created)."""
    lane = dataclasses.replace(
        settings,
        events_topic=f"{settings.events_topic}.crash-{run}",
        dlq_topic=f"{settings.dlq_topic}.crash-{run}",
        consumer_group_prefix=f"{settings.consumer_group_prefix}.crash-{run}",
    )
    await ensure_topics(lane)
    return lane


async def produce(lane: Settings, events: list[dict[str, Any]]) -> list[tuple[int, int, Any]]:
    """Send ``events`` to the lane's topic, keyed by record; ``(partition, offset, event)``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=lane.kafka_bootstrap, enable_idempotence=True, linger_ms=20
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                lane.events_topic, orjson.dumps(ev), key=f"{ev['tenant']}/{ev['subject']}".encode()
            )
            for ev in events
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset, ev) for m, ev in zip(metas, events, strict=True)]


@pytest.mark.usefixtures("stack")
async def test_sigkilled_projector_ends_exactly_equal_to_the_fold(settings: Settings) -> None:
    rng = random.Random(20261122)
    run = uuid.uuid4().hex[:6]
    lane = await crash_lane(settings, run)
    tenants = [f"crash{run}{n}" for n in range(TENANTS)]
    events = workload(tenants, rng)
    log = await produce(lane, events)

    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": lane.events_topic,
        "EVENTFOLD_DLQ_TOPIC": lane.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": lane.consumer_group_prefix,
        "EVENTFOLD_PROJECTOR_BATCH_SIZE": "500",
        # Each process serves its health and metrics: a port of its own.
        "EVENTFOLD_HTTP_PORT": str(free_port()),
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    pool = await open_pool(lane)
    consumer_name = f"{lane.consumer_group_prefix}.projector"

    async def progress() -> int:
        async with pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
                " WHERE consumer = $1",
                consumer_name,
            )
        return int(value)

    async def wait_until(target: int, proc: subprocess.Popen[bytes]) -> None:
        while await progress() < target:
            assert proc.poll() is None, "the projector died by itself"
            await asyncio.sleep(0.02)

    kills = 0
    killed_at: list[int] = []
    try:
        # Kill points spread over the run, each after fresh progress since the restart.
        targets = sorted(rng.sample(range(TOTAL // 10, TOTAL * 9 // 10), KILLS))
        for target in targets:
            proc = subprocess.Popen([EVENTFOLD, "process", "projector"], env=env)
            await wait_until(max(target, await progress() + 200), proc)
            await asyncio.sleep(rng.uniform(0, 0.05))  # land anywhere inside a batch
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            killed_at.append(await progress())
            assert killed_at[-1] < TOTAL, "a kill landed after the end: nothing was tested"
            kills += 1
        proc = subprocess.Popen([EVENTFOLD, "process", "projector", "--burst"], env=env)
        assert await asyncio.to_thread(proc.wait, 300) == 0
        assert await progress() == TOTAL
        assert kills == KILLS

        expected = reference_fold(log)
        async with pool.acquire() as conn:
            for t in tenants:
                rows = await conn.fetch(
                    f'SELECT collection, id, version, data, deleted FROM "t_{t}".records'
                )
                actual = [
                    (r["collection"], r["id"], r["version"], r["data"], r["deleted"]) for r in rows
                ]
                want = [
                    (c, i, rec.version, rec.data, not rec.live)
                    for (c, i), rec in expected[t].items()
                ]
                assert checksum(actual) == checksum(want), f"tenant {t} differs"
                history = await conn.fetchval(f'SELECT count(*) FROM "t_{t}".events')
                distinct = len({ev["id"] for ev in events if ev["tenant"] == t})
                assert history == distinct, f"tenant {t}: {history} history rows for {distinct}"
    finally:
        await pool.close()
