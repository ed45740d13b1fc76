"""Paired comparison of ``benchmarks.throughput`` result files: A/B per pair, medians.

Run the two commits in turn (A B A B …, each from its own checkout) so a drift of
the machine's speed hits both sides of a pair alike, then give the files in run
order. Each ratio is B/A within one pair; the median of the ratios is what to
quote, the spread says how noisy the machine was. Failed requests of every run
are summed: a side that failed requests did not do the same work.

    .venv/bin/python -m benchmarks.pairs \\
        --a benchmarks/results/2026-12-06-layers-before-{1..5}.json \\
        --b benchmarks/results/2026-12-06-layers-after-{1..5}.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import orjson

#: (section, figure) of a throughput result compared pair by pair.
FIGURES = (
    ("ingest_batches", "events_per_second"),
    ("ingest_batches", "gateway_cpu_ms_per_1000_events"),
    ("ingest_single", "requests_per_second"),
    ("ingest_single", "gateway_cpu_ms_per_request"),
    ("projector_catch_up", "events_per_second"),
    ("projector_catch_up", "projector_cpu_seconds_per_1000_events"),
)


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


def compare(a: list[Path], b: list[Path]) -> list[str]:
    """The report's lines: each side's commit, per figure the medians and the B/A ratios."""
    if len(a) != len(b) or not a:
        raise SystemExit("give as many A files as B files, in run order")
    docs_a, docs_b = [_load(p) for p in a], [_load(p) for p in b]
    lines = [
        f"A: {docs_a[0]['provenance'].get('commit')}  B: {docs_b[0]['provenance'].get('commit')}"
        f"  ({len(a)} pairs)"
    ]
    for section, figure in FIGURES:
        va = [d["results"][section][figure] for d in docs_a]
        vb = [d["results"][section][figure] for d in docs_b]
        ratios = [y / x for x, y in zip(va, vb, strict=True)]
        med_a, med_b = statistics.median(va), statistics.median(vb)
        lines.append(
            f"{section}.{figure}: median A {med_a:.3f}, B {med_b:.3f};"
            f" B/A per pair {[round(r, 2) for r in ratios]}, median {statistics.median(ratios):.2f}"
        )
    failed = sum(
        d["results"]["ingest_batches"]["failures"] + d["results"]["ingest_single"]["failures"]
        for d in docs_a + docs_b
    )
    lines.append(f"failed requests in all runs: {failed}")
    return lines


def main() -> None:
    """Parse the file lists and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for side in ("a", "b"):
        p.add_argument(f"--{side}", nargs="+", type=Path, required=True, help="files in run order")
    args = p.parse_args()
    print("\n".join(compare(args.a, args.b)))


if __name__ == "__main__":
    main()
