"""The suite's outputs: ``results/<date>.json``, a markdown summary and PNG plots."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import orjson

#: The issue's targets on this 2-core machine: (label, getter, comparison, target, unit).
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("ingest single-event requests/s", "ingest.single_saturation.requests_per_second", ">=", 8000, "req/s"),
    ("ingest events/s in batches", "ingest.batches.events_per_second", ">=", 50000, "events/s"),
    ("ingest p99 at 5,000 req/s", "ingest.single_fixed_rate[5000].latency_ms.p99", "<=", 25, "ms"),
    ("projection events/s (exactly-once)", "projection.events_per_second", ">=", 30000, "events/s"),
    ("write-to-visible p50 at 50 %", "end_to_end.runs[0.5].latency_ms.p50", "<=", 10, "ms"),
    ("write-to-visible p99 at 50 %", "end_to_end.runs[0.5].latency_ms.p99", "<=", 50, "ms"),
    ("cached read p99 at 5,000 req/s", "reads.cached.runs[5000].latency_ms.p99", "<=", 5, "ms"),
    ("uncached read p99 at 2,000 req/s", "reads.uncached.runs[2000].latency_ms.p99", "<=", 10, "ms"),
    ("rebuild events/s (all tenants)", "replay.all_tenants_kafka.events_per_second", ">=", 50000, "events/s"),
    ("API process peak memory", "memory.api", "<=", 80, "MB"),
    ("projector peak memory", "memory.projector", "<=", 150, "MB"),
]  # fmt: skip


def lookup(doc: dict[str, Any], path: str) -> float | None:
    """Follow a dotted path; ``name[x]`` picks the list item whose rate/share/target is x."""
    node: Any = doc
    # Split on the dots outside brackets: ``end_to_end[0.5]`` is one step.
    for part in re.findall(r"[^.\[]+(?:\[[^\]]*\])?", path):
        key, _, pick = part.partition("[")
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
        if pick:
            want = float(pick.rstrip("]"))
            node = next((item for item in node if any(
                float(item.get(k) or -1) == want for k in ("target_rate", "load_share", "target_rps")
            )), None)  # fmt: skip
            if node is None:
                return None
    return float(node) if isinstance(node, int | float) else None


def verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met."""
    rows = []
    for label, path, op, target, unit in TARGETS:
        value = lookup(doc, path)
        met = None if value is None or math.isnan(value) else (
            value >= target if op == ">=" else value <= target)  # fmt: skip
        rows.append({"target": label, "goal": f"{op} {target:,g} {unit}", "measured": value,
                     "unit": unit, "met": met})  # fmt: skip
    return rows


def write_json(doc: dict[str, Any], out: Path) -> None:
    """The whole result document."""
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(doc: dict[str, Any]) -> str:
    """The human summary: targets, phases, peers, correctness."""
    lines = [f"# Benchmark run {doc['date']} ({doc['sizes']} sizes)", ""]
    m = doc["machine"]
    lines += [f"Machine: {m['cpus']} cores, {m.get('memory_gb', '?')} GiB, Python {m['python']},"
              f" Kafka {m.get('kafka', '?')}, PostgreSQL {m.get('postgres', '?')}.", ""]  # fmt: skip
    lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for row in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {_fmt(row['measured'])} | {met} |")
    ing = doc.get("ingest", {})
    lines += ["", "## Ingest (acks=all)", "",
              "| run | rate | p50 ms | p90 | p99 | p99.9 | max | ingest CPU-s/1k |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    if ing:
        b = ing["batches"]
        lines.append(_lat_row(f"batches (mean {b['batch_events']:.0f} events)", f"{b['events_per_second']:,.0f} ev/s",
                              b["latency_ms"], b["processes"]["ingest"]))  # fmt: skip
        for r in ing.get("batches_fixed_rate", []):
            lines.append(_lat_row(f"batches @ {r['target_events_per_second']:,} ev/s (mean {r['batch_events']:.0f})",
                                  f"{r['achieved_rate'] * r['batch_events']:,.0f} ev/s", r["latency_ms"],
                                  r["processes"]["ingest"]))  # fmt: skip
        s = ing["single_saturation"]
        lines.append(_lat_row("single, saturation", f"{s['requests_per_second']:,.0f} req/s",
                              s["latency_ms"], s["processes"]["ingest"]))  # fmt: skip
        for r in ing["single_fixed_rate"]:
            lines.append(_lat_row(f"single @ {r['target_rate']:,.0f}/s",
                                  f"{r['achieved_rate']:,.0f} req/s", r["latency_ms"],
                                  r["processes"]["ingest"]))  # fmt: skip
    proj = doc.get("projection")
    if proj:
        p = proj["processes"]["projector"]
        lines += ["", "## Projection catch-up (exactly-once)", "",
                  f"{proj['events']:,} events in {proj['seconds']} s = **{proj['events_per_second']:,.0f}"
                  f" events/s**, {p['cpu_seconds_per_1000_events']} CPU-s per 1,000 events,"
                  f" peak RSS {p['peak_rss_mb']} MB."]  # fmt: skip
    if doc.get("end_to_end"):
        lines += ["", *end_to_end_lines(doc["end_to_end"])]
    reads = doc.get("reads")
    if reads:
        lines += ["", "## Reads (wrk, one API process)", "",
                  "| kind | target | achieved req/s | p50 ms | p90 | p99 | max |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for kind in ("cached", "uncached", "lists"):
            for r in reads.get(kind, {}).get("runs", []):
                lat = r.get("latency_ms", {})
                lines.append(f"| {kind} | {r.get('target_rps') or 'saturation'} |"
                             f" {_fmt(r.get('achieved_rps'))} | {lat.get('p50')} |"
                             f" {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} |")  # fmt: skip
    lines += ["", "## Peers (same topic, same PostgreSQL, same fold)", "",
              "| peer | phase | events/s | Eventfold events/s | Eventfold ÷ peer | CPU-s/1k peer |"
              " CPU-s/1k Eventfold | peak MB | correct |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc.get("peer_table", []):
        lines.append(
            f"| {row['peer']} | {row['phase']} | {_fmt(row['peer_rate'])} | {_fmt(row['eventfold_rate'])}"
            f" | {_fmt(row['ratio'])}× | {_fmt(row['peer_cpu'])} | {_fmt(row['eventfold_cpu'])} |"
            f" {_fmt(row['peer_peak_mb'])} | {row['correct']} |"
        )  # fmt: skip
    lines += ["", "## Correctness after each phase", ""]
    for phase, verdict in doc.get("checks", {}).items():
        lines.append(f"- {phase}: {'equal' if verdict['equal'] else 'DIFFERENT'} "
                     f"({verdict['records']:,} records; missing {verdict['missing']},"
                     f" extra {verdict['extra']}, different {verdict['different']})")  # fmt: skip
    rep = doc.get("replay", {})
    lines += ["", "## Replay", ""]
    if not rep.get("available"):
        lines.append(f"Not measured: {rep.get('why', 'not run')}.")
    else:
        for label in ("one_tenant_kafka", "one_tenant_archive", "all_tenants_kafka",
                      "all_tenants_archive"):  # fmt: skip
            r = rep.get(label, {})
            scan = (
                f"; {r['log_records_read']:,} log records read,"
                f" {_fmt(r['log_records_per_second'])} records/s"
                if r.get("log_records_read")
                else ""
            )
            if r.get("archive_events"):
                scan += f"; {r['archive_events']:,} of the events from the archive"  # fmt: skip
            lines.append(f"- {label}: exit {r.get('exit')}, {r.get('events', 0):,} events in"
                         f" {r.get('seconds')} s ({_fmt(r.get('events_per_second'))} events/s{scan})")  # fmt: skip
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in doc.get("plots", [])), ""]
    return "\n".join(lines)


def end_to_end_lines(e2e: dict[str, Any]) -> list[str]:
    """The write-to-visible section: the pipeline's maximum and each load level's latencies."""
    sat = e2e["saturation"]
    lines = [
        "## Write-to-visible (accepted → readable with the consistency token)",
        "",
        f"The pipeline's maximum (write+read pairs, {sat['concurrency']} in flight):"
        f" **{sat['pairs_per_second']:,.0f} pairs/s**; the loads below are shares of it."
        " A pair's latency counts from its scheduled start; the write leg is POST → 202,"
        " the read leg GET with the write's token → 200 (the wait for the projection"
        " included).",
        "",
        "| load | rate | p50 ms | p90 | p99 | p99.9 | max | write p50 / p99 | read p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [{**sat, "achieved_rate": sat["pairs_per_second"]}, *e2e["runs"]]:
        lat, w, rd = r["latency_ms"], r["write_ms"], r["read_ms"]
        load = f"{r['load_share']:.0%}" if "load_share" in r else "saturation"
        lines.append(f"| {load} | {r['achieved_rate']:,.0f}/s | {lat['p50']} |"
                     f" {lat['p90']} | {lat['p99']} | {lat['p99.9']} | {lat['max']} |"
                     f" {w['p50']} / {w['p99']} | {rd['p50']} / {rd['p99']} |")  # fmt: skip
    return lines


def _lat_row(label: str, rate: str, lat: dict[str, float], proc: dict[str, float]) -> str:
    return (f"| {label} | {rate} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['p99.9']} |"
            f" {lat['max']} | {proc['cpu_seconds_per_1000_events']} |")  # fmt: skip


def plots(doc: dict[str, Any], out_dir: Path, stem: str) -> list[str]:
    """PNG plots next to the results; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}-{name}.png", dpi=110)
        plt.close(fig)
        names.append(f"{stem}-{name}.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ing = doc.get("ingest", {})
    series = []
    if ing:
        series.append(("single, saturation", ing["single_saturation"]["cdf"]))
        series += [
            (f"single @ {r['target_rate']:,.0f}/s", r["cdf"]) for r in ing["single_fixed_rate"]
        ]
        series += [
            (f"batches @ {r['target_events_per_second']:,} events/s", r["cdf"])
            for r in ing.get("batches_fixed_rate", [])
        ]
    series += [
        (f"write-to-visible {r['load_share']:.0%}", r["cdf"])
        for r in doc.get("end_to_end", {}).get("runs", [])
    ]
    for label, cdf in series:
        if cdf:
            xs, ys = zip(*cdf, strict=True)
            ax.plot(xs, ys, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency distributions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "latency")

    proj = doc.get("projection")
    if proj and len(proj["timeline"]) > 2:
        fig, ax = plt.subplots(figsize=(8, 4))
        tl = proj["timeline"]
        xs = [t for t, _ in tl[1:]]
        rates = [(b - a) / max(tb - ta, 1e-9) for (ta, a), (tb, b) in itertools.pairwise(tl)]
        ax.plot(xs, rates, label="Eventfold projector")
        ax.set_xlabel("seconds")
        ax.set_ylabel("events/s")
        ax.set_title("Projection catch-up: throughput over time")
        ax.grid(True, alpha=0.3)
        save(fig, "projection")

    def lines(
        series: dict[str, list[Any]], xlabel: str, ylabel: str, title: str, name: str
    ) -> None:
        """One line per series of ``(x, y, ...)`` points."""
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, points in series.items():
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, name)

    rep = doc.get("replay", {})
    runs = {k: v["progress"] for k, v in rep.items() if isinstance(v, dict) and v.get("progress")}
    if runs:
        lines(runs, "seconds", "events folded", "Rebuild progress (eventfold replay)", "rebuild")
    lines(doc.get("memory_samples", {}), "seconds into the phase", "RSS (MiB)",
          "Memory of the processes under test", "memory")  # fmt: skip

    rows = doc.get("peer_table", [])
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['peer']}\n{r['phase']}" for r in rows]
        ax.bar(
            [i - 0.2 for i in range(len(rows))],
            [r["peer_rate"] or 0 for r in rows],
            0.4,
            label="peer",
        )
        ax.bar([i + 0.2 for i in range(len(rows))], [r["eventfold_rate"] or 0 for r in rows], 0.4,
               label="Eventfold")  # fmt: skip
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("events/s (log)")
        ax.set_title("Eventfold and its peers, same workload")
        ax.legend()
        save(fig, "peers")
    return names
