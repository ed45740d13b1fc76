"""Runs the peers on the benchmark's topic and PostgreSQL, each in its own process.

Each peer's result carries its throughput, CPU per 1,000 events, peak memory
and a correctness verdict against the same fold the Eventfold phases are held to.
Its throughput is given twice: as the peer measures itself (``events_per_second``)
and over its process's life (``process_events_per_second``, start-up included,
its table setup left out), which is how the projector's catch-up is timed and
what the comparison uses.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.suite import check
from benchmarks.suite.phases import Bench
from benchmarks.suite.procstat import ProcWatch, children_cpu
from benchmarks.suite.workload import Workload
from eventfold.ids import tenant_schema

ROOT = Path(__file__).resolve().parents[2]
_JSON = re.compile(rb"\{\"(?:events|notifications)\".*?\}")


async def _run_peer(name: str, argv: list[str], events: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *argv, env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    watch = ProcWatch({name: proc.pid}, interval=0.5)
    watch.start()
    stdout, _ = await proc.communicate()
    wall = time.perf_counter() - t0
    procs = await watch.stop(events, {name: children_cpu() - cpu0})
    found = _JSON.findall(stdout)
    if proc.returncode != 0 or not found:
        tail = stdout[-2000:].decode(errors="replace")
        return {"error": f"exit {proc.returncode}", "output": tail, "processes": procs}
    result: dict[str, Any] = orjson.loads(found[-1])
    result["processes"] = procs
    result["memory"] = watch.samples
    # The rate compared with the projector's: over the process's whole life, as the
    # projector's catch-up is timed (start-up included); a peer's own table setup aside.
    result["process_seconds"] = round(wall, 3)
    done = result.get("events") or result.get("notifications")
    if done:
        busy = wall - float(result.get("setup_seconds") or 0.0)
        result["process_events_per_second"] = round(done / busy, 1)
    return result


async def naive(bench: Bench, expected: check.State) -> dict[str, Any]:
    """The day-one aiokafka + asyncpg consumer, one transaction per event."""
    s = bench.settings
    size = await bench.topic_size()
    out = await _run_peer("naive", ["benchmarks.suite.peer_naive", "--bootstrap",
                          s.kafka_bootstrap, "--topic", s.events_topic, "--dsn", s.database_url],
                          size)  # fmt: skip
    out["check"] = await _verdict(bench, "peer_naive", expected)
    return out


async def batched(bench: Bench, expected: check.State) -> dict[str, Any]:
    """The day-one batched consumer (the headline peer): a transaction per 2,000 events.

    Its result carries whether its tables have exactly the indexes of Eventfold's
    projection (``same_indexes``); its schemas are dropped once checked.
    """
    from benchmarks.suite.peer_batched import CHECKPOINTS, schema_of

    s = bench.settings
    size = await bench.topic_size()
    out = await _run_peer("batched", ["benchmarks.suite.peer_batched", "--bootstrap",
                          s.kafka_bootstrap, "--topic", s.events_topic, "--dsn", s.database_url,
                          "--tenants", ",".join(bench.tenants)], size)  # fmt: skip
    pool = await bench.pool()
    try:
        if "error" not in out:
            state = await check.eventfold_state(pool, bench.tenants, schema_of)
            out["check"] = check.compare(expected, state).as_dict()
            async with pool.acquire() as conn:
                probe = bench.tenants[0]
                ours = await check.index_definitions(conn, tenant_schema(probe))
                theirs = await check.index_definitions(conn, schema_of(probe))
            out["same_indexes"] = ours == theirs
            out["indexes"] = theirs
        async with pool.acquire() as conn:
            for tenant in bench.tenants:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema_of(tenant)} CASCADE")
            await conn.execute(f"DROP SCHEMA IF EXISTS {CHECKPOINTS} CASCADE")
    finally:
        await pool.close()
    return out


async def faust_agent(bench: Bench, expected: check.State) -> dict[str, Any]:
    """A faust-streaming agent with the same sink."""
    s = bench.settings
    size = await bench.topic_size()
    out = await _run_peer("faust", ["benchmarks.suite.peer_faust", "--bootstrap",
                          s.kafka_bootstrap, "--topic", s.events_topic, "--dsn", s.database_url,
                          "--expect", str(size), "--partitions", str(s.topic_partitions)],
                          size)  # fmt: skip
    out["check"] = await _verdict(bench, "peer_faust", expected)
    return out


async def eventsourcing(bench: Bench, events: int, concurrency: int) -> dict[str, Any]:
    """The eventsourcing library: append the workload's events (``concurrency`` writers at
    once, as many as Eventfold's single-event ingest has in flight), then project them."""
    s = bench.settings
    base = ["benchmarks.suite.peer_eventsourcing"]
    tenants = ",".join(bench.tenants)
    append = await _run_peer("eventsourcing-append", [*base, "append", "--dsn",
                             s.database_url, "--events", str(events), "--tenants", tenants,
                             "--concurrency", str(concurrency)], events)  # fmt: skip
    project = await _run_peer("eventsourcing-project", [*base, "project", "--dsn",
                              s.database_url], events)  # fmt: skip
    if "seconds" in project:
        project["events_per_second"] = round(events / project["seconds"], 1)
        project["process_events_per_second"] = round(events / project["process_seconds"], 1)
        project["events"] = events
    # Each record's events were appended in generation order (one writer per record),
    # so the expected state is that sequence folded in order.
    expected = fold_sequence(Workload(bench.tenants), events)
    pool = await bench.pool()
    try:
        verdict = check.compare(expected, await check.peer_state(pool, "peer_es_view"))
    finally:
        await pool.close()
    return {"append": append, "project": project, "check": verdict.as_dict()}


def fold_sequence(workload: Workload, events: int) -> check.State:
    """The state ``events`` workload events leave when applied in order."""
    from datetime import UTC, datetime

    from eventfold.fold import Record, apply

    epoch = datetime.fromtimestamp(0, UTC)
    records: dict[tuple[str, str, str], Record | None] = {}
    for tenant, ev in workload.events(events):
        collection, _, rid = ev["subject"].partition("/")
        key = (tenant, collection, rid)
        records[key], _ = apply(records.get(key), ev["type"], ev.get("data"), at=epoch)
    return {k: (r.version, r.data) for k, r in records.items() if r is not None and r.live}


async def _verdict(bench: Bench, schema: str, expected: check.State) -> dict[str, Any]:
    pool = await bench.pool()
    try:
        return check.compare(expected, await check.peer_state(pool, schema)).as_dict()
    finally:
        await pool.close()
