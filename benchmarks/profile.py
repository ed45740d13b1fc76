"""Where the CPU goes: py-spy over ``benchmarks.throughput`` (gateway and projector).

Runs ``py-spy record --subprocesses --format raw`` around
``python -m benchmarks.throughput`` (the ingest gateway and the projector's
catch-up are its child processes), then folds the
collapsed stacks into, per process, the frames with the most samples of their
own (self) and the Eventfold functions with the most samples under them
(inclusive). Idle time is not sampled: these are shares of CPU time.

    .venv/bin/python -m benchmarks.profile [--rate 200] [-- throughput args...]

Writes ``results/<date>-profile.md`` and the raw stacks ``results/<date>-profile.txt``
(not kept in git: fold it again with ``--raw FILE``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
#: A py-spy frame: ``function (path:line)``.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^:()]+)(?::\d+)?\)$")


@dataclass(slots=True)
class ProcessProfile:
    """Sample counts of one process."""

    name: str
    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    ours: Counter[str] = field(default_factory=Counter)


def _label(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["path"]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


#: Top-level packages of Eventfold's code (py-spy prints paths relative to sys.path).
OURS = ("eventfold/", "consumers/", "producers/", "api/")


def fold(lines: list[str]) -> dict[str, ProcessProfile]:
    """Per process (the innermost ``process …`` frame), self and inclusive-Eventfold counts."""
    out: dict[str, ProcessProfile] = {}
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --subprocesses a child's stack starts with its parents' "process" frames.
        roots = [i for i, f in enumerate(frames) if f.startswith("process ")]
        at = roots[-1] if roots else 0
        process = frames[at].split(":", 1)[-1].strip('"') if roots else "main"
        frames = frames[at + 1 :]
        if not frames:
            continue
        prof = out.setdefault(process, ProcessProfile(process))
        prof.samples += count
        prof.self_time[_label(frames[-1])] += count
        seen: set[str] = set()
        for frame in frames:
            m = _FRAME.match(frame)
            if m and m["path"].startswith(OURS):
                label = _label(frame)
                if label not in seen:  # recursion counts once
                    seen.add(label)
                    prof.ours[label] += count
    return out


def markdown(profiles: dict[str, ProcessProfile], top: int = 15) -> str:
    """Tables of the top self and inclusive frames of every sampled process."""
    lines = ["# CPU profile (py-spy) of `benchmarks.throughput`", ""]
    for prof in sorted(profiles.values(), key=lambda p: -p.samples):
        if prof.samples < 100:
            continue
        lines += [f"## {prof.name} — {prof.samples:,} samples", "",
                  "| self | share | frame |", "|---|---|---|"]  # fmt: skip
        for frame, n in prof.self_time.most_common(top):
            lines.append(f"| {n:,} | {n / prof.samples:.1%} | `{frame}` |")
        lines += ["", "| inclusive | share | Eventfold function |", "|---|---|---|"]
        for frame, n in prof.ours.most_common(top):
            lines.append(f"| {n:,} | {n / prof.samples:.1%} | `{frame}` |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Record, fold and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--raw", help="fold an earlier recording instead of recording")
    p.add_argument("throughput_args", nargs="*", help="arguments for benchmarks.throughput")
    args = p.parse_args()
    prov = provenance.stamp()
    RESULTS.mkdir(exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-profile"
    raw = Path(args.raw) if args.raw else RESULTS / f"{stem}.txt"
    if not args.raw:
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [str(spy), "record", "--subprocesses", "--format", "raw", "--rate", str(args.rate),
               "--output", str(raw), "--", sys.executable, "-m", "benchmarks.throughput",
               *args.throughput_args]  # fmt: skip
        subprocess.run(cmd, check=True)
    md = f"Commit {provenance.describe(prov)}.\n\n" + markdown(fold(raw.read_text().splitlines()))
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
