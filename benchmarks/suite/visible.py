"""``python -m benchmarks.suite.visible [--quick]``: the suite's write-to-visible phase alone.

Starts the ingest gateway, the projector and the read API as their own
processes on a private topic, creates one tenant, then runs
:func:`~benchmarks.suite.phases.end_to_end` exactly as the suite does: the
pipeline's maximum (closed loop of write+read pairs), then 25/50/75 % of it.
Prints the suite's write-to-visible table with the CPU-seconds per 1,000 pairs
of every process, and writes ``results/<date>-visible-<sizes>.json`` (with its
commit). For judging a change to the write → projection → read path in pairs,
without the whole suite.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp

from benchmarks.suite import phases, report


async def run(sizes: phases.Sizes) -> dict[str, Any]:
    """Processes up, one tenant, the end-to-end phase; its result."""
    bench = await phases.Bench.create(tenants=1, partitions=8)
    try:
        await bench.start("ingest", "serve", "ingest")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
            await phases.start_pipeline(bench, session)
            result = await phases.end_to_end(bench, session, sizes)
    finally:
        bench.stop_all()
    for r in result["runs"]:
        r.pop("memory", None)
    return result


def cpu_lines(result: dict[str, Any]) -> list[str]:
    """CPU-seconds per 1,000 pairs of every process, per load level."""
    levels = [("saturation", result["saturation"])] + [
        (f"{r['load_share']:.0%}", r) for r in result["runs"]
    ]
    names = sorted(result["saturation"]["processes"])
    lines = ["| load | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, r in levels:
        cells = [str(r["processes"][n]["cpu_seconds_per_1000_events"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Run the phase; print its table and write ``results/<date>-visible-<sizes>.json``."""
    result, out = phases.run_alone("visible", "end_to_end", __doc__, run)
    lines = [*report.end_to_end_lines(result), "", "CPU-seconds per 1,000 pairs:", "",
             *cpu_lines(result)]  # fmt: skip
    print("\n".join(lines))
    print(f"\nsaved {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
