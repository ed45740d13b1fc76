"""``python -m benchmarks.suite [--quick|--smoke] [--results DIR] [--skip a,b | --only a,b]``.

Order: tenants → ingest (batches, single events at saturation and fixed rates)
→ projection catch-up → check → peers on the same topic (the day-one batched
consumer first: the headline comparison) → end-to-end write-to-visible: its own
maximum (write+read pairs, closed loop), then 25/50/75 % of it → check → reads
(open loop) → replay → check → webhooks (private database) → analytics →
integrations (private database) → workflows → ``results/<date>-<sizes>.json``, ``.md``,
plots. Every result file names its commit and whether the tree was clean.
``--only workflows`` runs one phase (and the core phases only when a picked phase
builds on them); such a partial run is quoted for its phases, never as the suite run.
``make bench QUICK=1`` runs the quick sizes; ``--smoke`` checks the suite itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from benchmarks import analytics, integrations, provenance, reads, throughput, workflows
from benchmarks.suite import check, peers, phases, report, webhooks


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


async def run(args: phases.Cli) -> dict[str, Any]:
    """Every phase in order (but those skipped); the result document."""
    sizes, skip = args.sizes, args.skip
    doc: dict[str, Any] = {"sizes": sizes.name, "skipped": sorted(skip), "checks": {},
                           "memory_samples": {}, "memory": {}}  # fmt: skip
    if args.only:
        doc["only"] = sorted(args.only)
    if args.core:
        await _core(args, doc)
    elif "reads" not in skip:
        await _reads(doc, sizes)
    await _beside(args, doc)
    doc["peer_table"] = peer_table(doc)
    doc["headline"] = headline(doc)
    doc["memory_peaks"] = memory_peaks(doc["memory"])
    doc["checks_different"] = checks_different(doc)
    return doc


async def _core(args: phases.Cli, doc: dict[str, Any]) -> None:
    """Tenants, ingest, projection, and the phases on their topic and tables: peers,
    write-to-visible, reads (in its place in the order), replay; each checked."""
    sizes, skip = args.sizes, args.skip
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
            doc["memory"]["projector (catch-up)"] = doc["projection"]["processes"]["projector"][
                "peak_rss_mib"
            ]
            await _check(bench, "projection", doc)

            if "peers" not in skip:
                _say("peers on the same topic")
                await _optional(doc, "peers", lambda: _peers(bench, sizes))

            if "visible" not in skip:
                _say("end-to-end write-to-visible")
                await bench.start("projector", "process", "projector", http=False)
                await bench.start("api", "serve", "api")
                doc["end_to_end"] = await phases.end_to_end(bench, session, sizes)
                doc["memory"]["api (write-to-visible)"] = phases.rss_peak(bench.procs["api"].pid)
                doc["memory"]["projector (write-to-visible)"] = phases.rss_peak(
                    bench.procs["projector"].pid
                )
                for name, samples in doc["end_to_end"]["runs"][-1].pop("memory", {}).items():
                    doc["memory_samples"][f"{name} (write-to-visible 75 %)"] = samples
                for r in doc["end_to_end"]["runs"]:
                    r.pop("memory", None)
                bench.stop("api")
                bench.stop("projector")
                await _check(bench, "end-to-end", doc)
        doc["memory"]["ingest (ingest and write-to-visible)"] = phases.rss_peak(
            bench.procs["ingest"].pid
        )
        bench.stop("ingest")

        if "reads" not in skip:
            await _reads(doc, sizes)

        if "replay" not in skip:
            _say("replay")
            await _optional(doc, "replay", lambda: phases.replay(bench))
            if doc.get("replay", {}).get("available"):
                await _check(bench, "replay", doc)
    finally:
        bench.stop_all()


async def _reads(doc: dict[str, Any], sizes: phases.Sizes) -> None:
    """The reads phase (its own records and API process)."""
    _say("reads (open loop)")
    read_args = argparse.Namespace(records=sizes.read_records, seconds=sizes.read_seconds,
                                   connections=64, rates=[1000, 2000, 5000])  # fmt: skip
    await _optional(doc, "reads", lambda: reads.run(read_args))
    for kind in ("cached", "uncached", "lists"):
        if "reads" in doc:
            doc["memory"][f"api (reads, {kind})"] = doc["reads"][kind]["api_peak_rss_mib"]


async def _beside(args: phases.Cli, doc: dict[str, Any]) -> None:
    """The phases with a database or topic of their own, after the core ones."""
    sizes, skip = args.sizes, args.skip
    if "webhooks" not in skip:
        _say("webhooks (a private database)")
        await _optional(doc, "webhooks", lambda: webhooks.run(sizes))
        for name, peak in doc.get("webhooks", {}).pop("serving_peak_rss_mib", {}).items():
            doc["memory"][f"{name} (webhooks)"] = peak
        for key, r in doc.get("webhooks", {}).items():
            if isinstance(r, dict) and "processes" in r:
                doc["memory"][f"notifier (webhooks, {key})"] = r["processes"]["notifier"][
                    "peak_rss_mib"
                ]
    if "analytics" not in skip:
        _say("analytics (faust worker)")
        await _optional(doc, "analytics", lambda: analytics.measure(sizes.analytics_events, 10))
    if "integrations" not in skip:
        _say("integrations (a private database)")
        await _optional(doc, "integrations", lambda: integrations.measure(sizes.integration_items))
    if "workflows" not in skip:
        _say("workflows (eventfold run, a topic of its own)")
        await _optional(
            doc, "workflows", lambda: workflows.measure(sizes.workflow_runs, sizes.fixed_seconds)
        )
    if "tracing" not in skip:
        _say("tracing (the same ingest and projection with OpenTelemetry off, then on)")
        await _optional(doc, "tracing", lambda: _tracing(sizes))
    if "encryption" not in skip:
        _say("encryption (the same ingest and projection in a plain, then a personal collection)")
        await _optional(doc, "encryption", lambda: _encryption(sizes))


async def _tracing(sizes: phases.Sizes) -> dict[str, Any]:
    """What OpenTelemetry costs: CPU per event of the gateway and the projector, off then
    on (spans exported to a sink in the process), on fresh topics each."""
    return await _paired(sizes, ("untraced", "traced"), "tracing_overhead", trace="both")


async def _encryption(sizes: phases.Sizes) -> dict[str, Any]:
    """What crypto-shredding costs: CPU per event of the gateway and the projector when
    the events' collection is personal (data encrypted per record), on fresh topics."""
    return await _paired(sizes, ("plain", "personal"), "encryption_overhead", personal="both")


async def _paired(
    sizes: phases.Sizes,
    sides: tuple[str, str],
    key: str,
    *,
    trace: str = "off",
    personal: str = "off",
) -> dict[str, Any]:
    """The throughput load twice (``sides``), and what changed between them (``key``)."""
    args = argparse.Namespace(
        tenants=5, partitions=8, batch_events=sizes.batch_events // 2, batch_size=500,
        concurrency=8, single_requests=sizes.single_saturation // 2,
        single_concurrency=phases.SINGLE_CONCURRENCY, trace=trace, personal=personal,
        pairs=OVERHEAD_PAIRS,
    )  # fmt: skip
    both = await throughput.run(args)
    failures = sum(
        run[part]["failures"]
        for side in sides
        for run in both[side]
        for part in ("ingest_batches", "ingest_single")
    )
    return {"batch_events": args.batch_events, "single_requests": args.single_requests,
            "pairs": args.pairs, "failures": failures, "overhead": both[key]}  # fmt: skip


#: Runs of each side of an overhead (alternating): one pair's change moved by ±6 points
#: from run to run on this machine (the plain side's own CPU per event by as much).
OVERHEAD_PAIRS = 3


async def _optional(
    doc: dict[str, Any], name: str, measure: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """Run an optional phase into ``doc[name]``; if it fails, record why under ``errors``
    and go on (its figures are then "not measured", and the report says why)."""
    try:
        doc[name] = await measure()
    except Exception as exc:
        doc.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:600]
        _say(f"{name} FAILED: {doc['errors'][name]}")


async def _peers(bench: phases.Bench, sizes: phases.Sizes) -> dict[str, Any]:
    """Every peer on the run's topic, the day-one batched consumer first."""
    expected = await check.fold_log(
        bench.settings.kafka_bootstrap, bench.settings.events_topic, set(bench.tenants)
    )
    return {
        BATCHED: await peers.batched(bench, expected),
        "aiokafka+asyncpg (one tx per event)": await peers.naive(bench, expected),
        "faust-streaming agent": await peers.faust_agent(bench, expected),
        "eventsourcing (PostgreSQL)": await peers.eventsourcing(
            bench, sizes.eventsourcing_events, phases.SINGLE_CONCURRENCY
        ),
    }


#: The headline peer's name in the result document.
BATCHED = "day-one batched (getmany, tx per 2,000 events, executemany, checkpoint)"


def memory_peaks(memory: dict[str, float]) -> dict[str, float]:
    """The highest peak RSS (MiB) per kind of process (``api``, ``projector``…) over the phases."""
    peaks: dict[str, float] = {}
    for name, value in memory.items():
        kind = name.split(" ", 1)[0]
        peaks[kind] = max(peaks.get(kind, 0.0), value)
    return peaks


def checks_different(doc: dict[str, Any]) -> int | None:
    """Correctness checks that did not come out equal: Eventfold's after each phase, each
    peer's; None when none ran (an ``--only`` run of phases that check nothing)."""
    if not doc.get("checks") and not doc.get("peers"):
        return None
    verdicts = list(doc.get("checks", {}).values())
    verdicts += [p["check"] for p in doc.get("peers", {}).values() if "check" in p]
    missing = sum(1 for p in doc.get("peers", {}).values() if "check" not in p)
    return sum(1 for v in verdicts if not v.get("equal")) + missing


def headline(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Eventfold's projection against the day-one batched peer in the same run."""
    peer = doc.get("peers", {}).get(BATCHED)
    if not peer or not peer.get("process_events_per_second"):
        return None
    ours = doc["projection"]["events_per_second"]
    theirs = peer["process_events_per_second"]
    return {"eventfold_events_per_second": ours, "peer_events_per_second": theirs,
            "ratio": round(ours / theirs, 2), "same_indexes": peer.get("same_indexes"),
            "correct": bool(peer.get("check", {}).get("equal"))}  # fmt: skip


def peer_table(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (peer, phase): its rate, Eventfold's, the ratio, CPU and memory."""
    ps = doc.get("peers")
    if not ps:
        return []
    proj = doc["projection"]
    ef_proj_rate = proj["events_per_second"]
    ef_proj_cpu = proj["processes"]["projector"]["cpu_seconds_per_1000_events"]
    ing = doc["ingest"]["single_saturation"]
    rows = []

    def row(peer: str, phase: str, res: dict[str, Any], ef_rate: float, ef_cpu: float,
            proc: str, rate_key: str = "process_events_per_second") -> None:  # fmt: skip
        rate = res.get(rate_key)
        p = res.get("processes", {}).get(proc, {})
        rows.append({
            "peer": peer, "phase": phase, "peer_rate": rate, "eventfold_rate": ef_rate,
            "ratio": round(ef_rate / rate, 2) if rate else None,
            "peer_cpu": p.get("cpu_seconds_per_1000_events"), "eventfold_cpu": ef_cpu,
            "peer_peak_mib": p.get("peak_rss_mib"),
            "correct": "yes" if res.get("check", {}).get("equal") else res.get("error", "no"),
        })  # fmt: skip

    row("day-one batched: getmany, one tx per 2,000 events, executemany, checkpoint row",
        "projection", ps[BATCHED], ef_proj_rate, ef_proj_cpu, "batched")  # fmt: skip
    row("aiokafka+asyncpg, one tx per event", "projection",
        ps["aiokafka+asyncpg (one tx per event)"], ef_proj_rate, ef_proj_cpu, "naive")  # fmt: skip
    row("faust-streaming agent, one tx per event", "projection", ps["faust-streaming agent"],
        ef_proj_rate, ef_proj_cpu, "faust")  # fmt: skip
    es = ps["eventsourcing (PostgreSQL)"]
    es_check = {"check": es["check"]}
    row("eventsourcing", f"append, one event per save, {ing['concurrency']} writers"
        f" (Eventfold: single-event requests, {ing['concurrency']} in flight)",
        {**es["append"], **es_check}, ing["requests_per_second"],
        ing["processes"]["ingest"]["cpu_seconds_per_1000_events"],
        "eventsourcing-append", "events_per_second")  # fmt: skip
    row("eventsourcing", "projection", {**es["project"], **es_check}, ef_proj_rate, ef_proj_cpu,
        "eventsourcing-project")  # fmt: skip
    return rows


def main() -> None:
    """Run the suite; write results/<date>-<sizes>.json, .md and the plots."""
    args = phases.cli(__doc__)
    prov = provenance.stamp()
    started = time.monotonic()
    doc = asyncio.run(run(args))
    doc["provenance"] = prov
    doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["seconds"] = round(time.monotonic() - started, 1)
    doc["machine"] = _machine()
    doc["targets"] = report.verdicts(doc)
    # A partial run's file names its phases: ``<date>-smoke-workflows.json``.
    name = "-".join([args.sizes.name, *sorted(args.only)])
    path = provenance.new_path(args.results, provenance.dated_stem(name))
    stem = path.stem
    doc["plots"] = report.plots(doc, args.results, stem)
    report.write_json(doc, path)
    md = report.markdown(doc)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"\nsaved {path}, .md and {len(doc['plots'])} plots ({doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
