"""``python -m benchmarks.tables [--check]``: BENCHMARKS.md's tables, from the newest result files.

Reads every ``benchmarks/results/*.json`` that names the commit it ran on (see
:mod:`benchmarks.provenance`; older files do not, and are never quoted) and is
not a smoke run, and rewrites the part of ``BENCHMARKS.md`` between
:data:`BEGIN` and :data:`END`:

1. the targets, for the newest full and the newest quick suite run side by
   side (each row with its failures; re-judged against today's targets);
2. the headline: the projector against the day-one batched peer, per run;
3. the peers table, per run;
4. every phase of the newest suite run (full if there is one, else quick);
5. webhooks, analytics, integrations, workflows, a rebalance and a tenant move from the newest
   file holding them (a suite run, an ``--only`` run or the phase's own command),
   and the newest soak.

Each table says which file it comes from, that file's commit and whether the
tree was clean. A table with no such file says "not measured yet": no figure
is written by hand. ``--check`` exits 1 when the file is not what the results
give (without writing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.provenance import RESULTS, ROOT, describe
from benchmarks.suite import report

BEGIN = (
    "<!-- tables:begin: written by `python -m benchmarks.tables` from benchmarks/results;"
    " edits here are overwritten -->"
)
END = "<!-- tables:end -->"
NOT_YET = "Not measured yet: no result file with a recorded commit holds it."


@dataclass(frozen=True, slots=True)
class Source:
    """One result file with its provenance."""

    path: Path
    doc: dict[str, Any]

    @property
    def prov(self) -> dict[str, Any]:
        """Where it came from (commit, clean, time)."""
        prov: dict[str, Any] = self.doc["provenance"]
        return prov

    @property
    def recorded_at(self) -> str:
        """When the run started (UTC, ISO 8601: sorts as text)."""
        return str(self.prov.get("recorded_at") or "")

    @property
    def sizes(self) -> str | None:
        """``full``, ``quick``, ``smoke`` or None (a command without sizes).

        A phase's own command run with ``--smoke`` before it wrote ``sizes`` says so
        in its arguments: it is a smoke run too.
        """
        sizes = self.doc.get("sizes")
        if sizes is None and (self.doc.get("args") or {}).get("smoke"):
            return "smoke"
        return str(sizes) if sizes is not None else None

    def cite(self) -> str:
        """``From `file` (commit abc (clean), started …).``"""
        return (
            f"From `{self.path.name}` (commit {describe(self.prov)}, started {self.recorded_at})."
        )


def load(directory: Path = RESULTS) -> list[Source]:
    """Result files that name their commit, smoke runs left out, oldest first."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(doc, dict) or not (doc.get("provenance") or {}).get("commit"):
            continue
        source = Source(path, doc)
        if source.sizes != "smoke":
            found.append(source)
    return sorted(found, key=lambda s: s.recorded_at)


def newest(sources: list[Source], holds: Callable[[Source], bool]) -> Source | None:
    """The most recent source for which ``holds`` is true."""
    return next((s for s in reversed(sources) if holds(s)), None)


def suite_run(sources: list[Source], sizes: str) -> Source | None:
    """The newest whole suite run of ``sizes`` (a partial ``--only`` run is not one)."""
    return newest(
        sources, lambda s: s.sizes == sizes and "targets" in s.doc and not s.doc.get("only")
    )


def _section(part: dict[str, Any] | None, source: Source | None, title: str,
             lines: Callable[[Any], list[str]]) -> list[str]:  # fmt: skip
    if part is None or source is None:
        return [f"### {title}", "", NOT_YET]
    body = lines(part)
    return ["#" + body[0], "", source.cite(), *body[1:]]


def _part(sources: list[Source], key: str) -> tuple[dict[str, Any] | None, Source | None]:
    """The newest value of ``key`` in any result file (a suite run or the phase's own)."""
    source = newest(sources, lambda s: bool(s.doc.get(key)))
    return (source.doc[key], source) if source else (None, None)


#: Phases whose figure depends on the run's size (the share of events that make a new
#: record key, for encryption): the newest full and quick runs are both shown.
BY_SIZE = frozenset({"encryption"})


def _sections_by_size(
    sources: list[Source], key: str, title: str, render: Callable[[Any], list[str]]
) -> list[str]:
    """The newest full run's section of ``key``, then the newest quick run's."""
    lines: list[str] = []
    for size in ("full", "quick"):

        def holds(s: Source, size: str = size) -> bool:
            return s.sizes == size and bool(s.doc.get(key))

        source = newest(sources, holds)
        if source is not None:
            body = _section(source.doc[key], source, title, render)
            lines += [f"{body[0]} — {size} sizes", *body[1:], ""]
    return lines or [*_section(None, None, title, render), ""]


def _workflow_sections(
    sources: list[Source], title: str, render: Callable[[Any], list[str]]
) -> list[str]:
    """The newest workflows run of each process layout, one process first."""
    layouts: dict[str, Source] = {}
    for source in sources:  # oldest first: the newest of a layout stays
        part = source.doc.get("workflows")
        if part:
            layouts[str(part.get("process", "eventfold run (one process)"))] = source
    lines: list[str] = []
    for _, source in sorted(layouts.items(), key=lambda kv: not kv[0].startswith("eventfold run")):
        lines += [*_section(source.doc["workflows"], source, title, render), ""]
    return lines or [*_section(None, None, title, render), ""]


def targets_table(full: Source | None, quick: Source | None) -> list[str]:
    """Every target, judged on the newest full and quick runs side by side."""
    runs = [(name, src, report.verdicts(src.doc) if src else None)
            for name, src in (("full", full), ("quick", quick))]  # fmt: skip
    lines = ["## Targets", "",
             "| target | goal | full run | failures | met | quick run | failures | met |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, (label, _, op, target, unit, _) in enumerate(report.TARGETS):
        cells = [label, f"{op} {target:,g} {unit}"]
        for _, _, rows in runs:
            if rows is None:
                cells += ["not measured yet", "—", "—"]
                continue
            row = rows[k]
            met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
            fails = "—" if row["failures"] is None else f"{row['failures']:,}"
            cells += [report.fmt(row["measured"]), fails, met]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, src, _ in runs:
        lines.append(f"- {name} run: {src.cite() if src else 'not run yet.'}")
        for phase, why in (src.doc.get("errors") or {}).items() if src else ():
            lines.append(f"  Its {phase} phase failed (not measured): {why}")
    lines += ["", "A target whose row had failed requests is not met, whatever its value."]
    return lines


def per_run(title: str, runs: list[tuple[str, Source | None]],
            lines: Callable[[dict[str, Any]], list[str]]) -> list[str]:  # fmt: skip
    """A section repeated for each run that has it."""
    out = [f"## {title}", ""]
    had = False
    for name, src in runs:
        body = lines(src.doc) if src else []
        if not body:
            continue
        had = True
        out += [f"**{name} run.** {src.cite() if src else ''}", "", *body[2:], ""]
    if not had:
        out.append(NOT_YET)
    return out


def soak_lines(doc: dict[str, Any]) -> list[str]:
    """The newest soak: memory of every process over time."""
    from benchmarks.suite.soak import markdown

    text = markdown(doc).splitlines()
    return ["## Soak (memory over time)", *text[1:]]


def generate(sources: list[Source]) -> str:
    """The generated part of BENCHMARKS.md (between the markers, exclusive)."""
    full, quick = suite_run(sources, "full"), suite_run(sources, "quick")
    runs = [("Full", full), ("Quick", quick)]
    detail = full or quick
    lines = targets_table(full, quick)
    lines += ["", *per_run("Headline: the projector against the day-one batched peer", runs,
                           report.headline_lines)]  # fmt: skip
    lines += ["", *per_run("Peers", runs, report.peer_lines)]
    lines += ["", "## Every phase of the newest suite run", ""]
    if detail is None:
        lines.append(NOT_YET)
    else:
        lines.append(detail.cite())
        for section in (report.ingest_lines, report.projection_lines, report.end_to_end_section,
                        report.reads_lines, report.replay_lines, report.memory_lines,
                        report.check_lines):  # fmt: skip
            body = section(detail.doc)
            if body:
                lines += ["", "#" + body[0], *body[1:]]
    lines += ["", "## Beside the suite's core phases", ""]
    for key, title, render in (
        ("webhooks", "Webhook delivery", report.webhook_lines),
        ("analytics", "Analytics (faust-streaming)", report.analytics_lines),
        ("integrations", "Integrations", report.integrations_lines),
        ("workflows", "Workflows", report.workflows_lines),
        ("tracing", "Tracing overhead", report.tracing_lines),
        ("encryption", "Encryption overhead", report.encryption_lines),
        ("rebalance", "A rebalance", report.rebalance_lines),
        ("tenant_move", "A tenant moved between database servers", report.tenant_move_lines),
    ):
        if key in BY_SIZE:
            lines += _sections_by_size(sources, key, title, render)
            continue
        if key == "workflows":
            lines += _workflow_sections(sources, title, render)
            continue
        part, source = _part(sources, key)
        lines += [*_section(part, source, title, render), ""]
    soak = newest(sources, lambda s: s.doc.get("benchmark") == "soak" or "samples" in s.doc)
    lines += _section(soak.doc if soak else None, soak, "Soak (memory over time)", soak_lines)
    return "\n".join(lines).rstrip() + "\n"


def rewrite(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"BENCHMARKS.md lacks the markers {BEGIN!r} … {END!r}")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite BENCHMARKS.md (or, with ``--check``, say whether it is up to date)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md is stale")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--file", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    text = args.file.read_text()
    new = rewrite(text, generate(load(args.results)))
    if args.check:
        if new != text:
            print(f"{args.file} is not what the result files give: run python -m benchmarks.tables")
            return 1
        return 0
    args.file.write_text(new)
    print(f"wrote the tables of {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
