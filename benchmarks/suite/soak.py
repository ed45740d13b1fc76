"""``python -m benchmarks.suite.soak [--minutes 30] [--rate 200]``: memory over a long run.

Starts the ingest gateway, the read API and the projector as their own processes
(as the suite does), then drives an open loop for ``--minutes``: each call
writes one event of the suite's workload and reads a record of the same tenant
back through the API with the write's consistency token (so the projector and
the API both work all along). Every process's RSS is sampled every 10 s.

Reported per process: RSS after the warm-up, at the end, the peak, and the slope
of a least-squares line through the samples after the warm-up (MiB per 10
minutes): a leak shows as a steady positive slope. Writes
``results/<date>-soak.json`` (with its commit), ``.md`` and ``-soak-memory.png``; progress is shown
while it runs. ``make soak`` runs the 30-minute default.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import provenance
from benchmarks.suite import phases
from benchmarks.suite.procstat import ProcWatch
from eventfold.auth import issue_token

WARMUP_S = 120.0


def slope_per_10_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per 10 minutes (0 for < 2)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var * 600


def summarise(samples: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per process: RSS after the warm-up, at the end, peak and slope after the warm-up."""
    out = {}
    for name, points in samples.items():
        steady = [(t, m) for t, m in points if t >= WARMUP_S] or points
        if not steady:
            continue
        out[name] = {
            "rss_after_warmup_mib": round(steady[0][1], 1),
            "rss_end_mib": round(steady[-1][1], 1),
            "rss_peak_mib": round(max(m for _, m in points), 1),
            "slope_mib_per_10_min": round(slope_per_10_min(steady), 2),
        }
    return out


async def run(minutes: float, rate: float) -> dict[str, Any]:
    """The soak: processes up, open loop for ``minutes``, RSS samples; the result document."""
    bench = await phases.Bench.create(tenants=10, partitions=8)
    try:
        await bench.start("ingest", "serve", "ingest")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
            await phases.start_pipeline(bench, session)
            readers = {t: {"Authorization": "Bearer " + issue_token(
                bench.settings.jwt_secret, tenant=t, roles=["reader"], ttl_seconds=86400)}
                for t in bench.tenants}  # fmt: skip
            events = iter(bench.workload.events(10**9))
            ingest, api = bench.url("ingest"), bench.url("api")

            async def write_then_read(_i: int) -> None:
                tenant, ev = next(events)
                async with session.post(
                    f"{ingest}/v1/tenants/{tenant}/events",
                    data=orjson.dumps(ev),
                    headers={"Content-Type": "application/json", **bench.tokens[tenant]},
                ) as r:
                    body = await r.json()
                    if r.status != 202:
                        raise RuntimeError(f"write answered {r.status}")
                collection, _, rid = str(ev["subject"]).partition("/")
                async with session.get(
                    f"{api}/v1/tenants/{tenant}/collections/{collection}/records/{rid}",
                    headers={**readers[tenant], "X-Consistency-Token": body["consistency_token"]},
                ) as r:
                    await r.read()
                    if r.status not in (200, 404):  # 404: the write was a delete
                        raise RuntimeError(f"read answered {r.status}")

            watch = ProcWatch({n: p.pid for n, p in bench.procs.items()}, interval=10.0)
            watch.start()
            started = time.monotonic()
            load = await phases.open_loop(rate, minutes * 60, write_then_read, "soak")
            processes = await watch.stop(load["requests"])
    finally:
        bench.stop_all()
    load.pop("cdf", None)
    return {
        "minutes": minutes,
        "rate": rate,
        "seconds": round(time.monotonic() - started, 1),
        "load": load,
        "processes": processes,
        "memory": summarise(watch.samples),
        "samples": watch.samples,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The soak's summary table."""
    load = doc["load"]
    lines = [
        f"# Soak {doc['date']}: {doc['minutes']:.0f} min at {doc['rate']:,.0f} write+read/s",
        "",
        f"Achieved {load['achieved_rate']:,.1f}/s, {load['failures']} failures"
        f" {load.get('failure_reasons') or ''}; write-to-visible "
        f"p50 {load['latency_ms']['p50']:.1f} ms, p99 {load['latency_ms']['p99']:.1f} ms.",
        "",
        "| process | RSS after warm-up (MiB) | RSS at end | peak | slope (MiB / 10 min) |",
        "|---|---|---|---|---|",
    ]
    for name, m in doc["memory"].items():
        lines.append(
            f"| {name} | {m['rss_after_warmup_mib']} | {m['rss_end_mib']} | {m['rss_peak_mib']} "
            f"| {m['slope_mib_per_10_min']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """RSS of every process over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, points in doc["samples"].items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot([x / 60 for x in xs], ys, label=name)
    ax.axvline(WARMUP_S / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"Memory over a {doc['minutes']:.0f}-minute soak at {doc['rate']:,.0f}/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run the soak; write results/<date>-soak.json, .md and the memory plot."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=200.0, help="write+read pairs per second")
    p.add_argument("--results", type=Path, default=provenance.RESULTS, help="where results go")
    args = p.parse_args()
    prov = provenance.stamp()
    doc = asyncio.run(run(args.minutes, args.rate))
    doc["benchmark"] = "soak"
    doc["provenance"] = prov
    doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    path = provenance.save(doc, "soak", args.results)
    plot(doc, path.with_name(f"{path.stem}-memory.png"))
    md = markdown(doc)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
