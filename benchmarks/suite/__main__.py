"""``python -m benchmarks.suite [--quick]``: every phase, the peers, the report.

Order: tenants → ingest (batches, single events at saturation and fixed rates)
→ projection catch-up → check → peers on the same topic → end-to-end
write-to-visible: its own maximum (write+read pairs, closed loop), then 25/50/75 %
of it → check →
reads (wrk) → replay (when built) → check → results/<date>.json, .md, plots.
``make bench QUICK=1`` runs the quick sizes (under 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import reads
from benchmarks.suite import check, peers, phases, report

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _say(text: str) -> None:
    sys.stderr.write(f"\n== {text}\n")
    sys.stderr.flush()


def _machine() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    mem_kb = int(open("/proc/meminfo").readline().split()[1])  # noqa: SIM115
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "postgres": first_line(["psql", "--version"]),
        "kafka": "4.4.0 (KRaft, one broker)",
    }


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


async def _check(bench: phases.Bench, label: str, doc: dict[str, Any]) -> None:
    expected = await check.fold_log(
        bench.settings.kafka_bootstrap, bench.settings.events_topic, set(bench.tenants)
    )
    pool = await bench.pool()
    try:
        verdict = check.compare(expected, await check.eventfold_state(pool, bench.tenants))
    finally:
        await pool.close()
    doc["checks"][label] = verdict.as_dict()
    _say(f"check after {label}: {'equal' if verdict.equal else 'DIFFERENT'} {verdict.as_dict()}")


async def run(sizes: phases.Sizes) -> dict[str, Any]:
    """Every phase in order; the result document."""
    doc: dict[str, Any] = {"sizes": sizes.name, "checks": {}, "memory_samples": {}}
    bench = await phases.Bench.create(tenants=50, partitions=8)
    try:
        _say("starting the ingest gateway, creating 50 tenants")
        await bench.start("ingest", "serve", "ingest")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
            await phases.create_tenants(bench, session)
            await phases.project_burst(bench, "tenant creation")
            _say("ingest")
            doc["ingest"] = await phases.ingest(bench, session, sizes)
            _say("projection catch-up")
            doc["projection"] = await phases.project_burst(bench, "projection catch-up")
            doc["memory_samples"]["projector (catch-up)"] = doc["projection"].pop("memory")[
                "projector"
            ]
            await _check(bench, "projection", doc)

            _say("peers on the same topic")
            expected = await check.fold_log(
                bench.settings.kafka_bootstrap, bench.settings.events_topic, set(bench.tenants)
            )
            doc["peers"] = {
                "aiokafka+asyncpg (one tx per event)": await peers.naive(bench, expected),
                "faust-streaming agent": await peers.faust_agent(bench, expected),
                "eventsourcing (PostgreSQL)": await peers.eventsourcing(
                    bench, sizes.eventsourcing_events
                ),
            }

            _say("end-to-end write-to-visible")
            await bench.start("projector", "process", "projector", http=False)
            await bench.start("api", "serve", "api")
            doc["end_to_end"] = await phases.end_to_end(bench, session, sizes)
            for name in ("api", "projector", "ingest"):
                doc.setdefault("memory", {})[name] = phases.rss_peak(bench.procs[name].pid)
            # The projector's target holds while it catches up too (its peak, not its idle).
            catch_up = doc["projection"]["processes"]["projector"]["peak_rss_mb"]
            doc["memory"]["projector"] = max(doc["memory"]["projector"], catch_up)
            for name, samples in doc["end_to_end"]["runs"][-1].pop("memory", {}).items():
                doc["memory_samples"][f"{name} (write-to-visible 75 %)"] = samples
            for r in doc["end_to_end"]["runs"]:
                r.pop("memory", None)
            bench.stop("api")
            bench.stop("projector")
            await _check(bench, "end-to-end", doc)
        bench.stop("ingest")

        _say("reads (wrk)")
        args = argparse.Namespace(records=sizes.read_records, seconds=sizes.read_seconds,
                                  connections=64, rates=[1000, 2000, 5000])  # fmt: skip
        doc["reads"] = await reads.run(args)

        _say("replay")
        doc["replay"] = await phases.replay(bench)
        if doc["replay"].get("available"):
            await _check(bench, "replay", doc)
    finally:
        bench.stop_all()
    doc["peer_table"] = peer_table(doc)
    return doc


def peer_table(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (peer, phase): its rate, Eventfold's, the ratio, CPU and memory."""
    proj = doc["projection"]
    ef_proj_rate = proj["events_per_second"]
    ef_proj_cpu = proj["processes"]["projector"]["cpu_seconds_per_1000_events"]
    ing = doc["ingest"]["single_saturation"]
    rows = []

    def row(peer: str, phase: str, res: dict[str, Any], ef_rate: float, ef_cpu: float,
            proc: str) -> None:  # fmt: skip
        rate = res.get("events_per_second")
        p = res.get("processes", {}).get(proc, {})
        rows.append({
            "peer": peer, "phase": phase, "peer_rate": rate, "eventfold_rate": ef_rate,
            "ratio": round(ef_rate / rate, 2) if rate else None,
            "peer_cpu": p.get("cpu_seconds_per_1000_events"), "eventfold_cpu": ef_cpu,
            "peer_peak_mb": p.get("peak_rss_mb"),
            "correct": "yes" if res.get("check", {}).get("equal") else res.get("error", "no"),
        })  # fmt: skip

    ps = doc["peers"]
    row("aiokafka+asyncpg", "projection", ps["aiokafka+asyncpg (one tx per event)"], ef_proj_rate,
        ef_proj_cpu, "naive")  # fmt: skip
    row("faust-streaming", "projection", ps["faust-streaming agent"], ef_proj_rate, ef_proj_cpu,
        "faust")  # fmt: skip
    es = ps["eventsourcing (PostgreSQL)"]
    es_check = {"check": es["check"]}
    row("eventsourcing", "append (one event per save)", {**es["append"], **es_check},
        ing["requests_per_second"], ing["processes"]["ingest"]["cpu_seconds_per_1000_events"],
        "eventsourcing-append")  # fmt: skip
    row("eventsourcing", "projection", {**es["project"], **es_check}, ef_proj_rate, ef_proj_cpu,
        "eventsourcing-project")  # fmt: skip
    return rows


def main() -> None:
    """Run the suite; write results/<date>.json, .md and the plots."""
    sizes = phases.sizes_from_args(__doc__)
    started = time.monotonic()
    doc = asyncio.run(run(sizes))
    doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["seconds"] = round(time.monotonic() - started, 1)
    doc["machine"] = _machine()
    doc["targets"] = report.verdicts(doc)
    RESULTS.mkdir(exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}" + ("" if sizes is phases.FULL else f"-{sizes.name}")
    doc["plots"] = report.plots(doc, RESULTS, stem)
    report.write_json(doc, RESULTS / f"{stem}.json")
    md = report.markdown(doc)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    print(f"\nsaved {RESULTS / stem}.json, .md and {len(doc['plots'])} plots "
          f"({doc['seconds']:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
