"""The suite's outputs: ``results/<date>.json``, a markdown summary and PNG plots."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import orjson

from benchmarks.provenance import describe

#: The targets on this 2-core machine (issue 29, and the earlier ones it keeps):
#: (label, value path, comparison, target, unit, failures path or None). A target
#: with failures in its row is not met, whatever its value.
TARGETS: list[tuple[str, str, str, float, str, str | None]] = [
    ("projection events/s (exactly-once, 4 secondary indexes)", "projection.events_per_second", ">=", 20000, "events/s", None),
    ("projection ÷ day-one batched peer, same run", "headline.ratio", ">=", 2.5, "×", None),
    ("write-to-visible p50 at 50 % of the pipeline's maximum", "end_to_end.runs[0.5].latency_ms.p50", "<=", 10, "ms", "end_to_end.runs[0.5].failures"),
    ("write-to-visible p99 at 50 % of the pipeline's maximum", "end_to_end.runs[0.5].latency_ms.p99", "<=", 50, "ms", "end_to_end.runs[0.5].failures"),
    ("rebuild events/s, all tenants, from Kafka", "replay.all_tenants_kafka.events_per_second", ">=", 35000, "events/s", None),
    ("rebuild events/s, all tenants, from the archive", "replay.all_tenants_archive.events_per_second", ">=", 35000, "events/s", None),
    ("webhook deliveries/s to one endpoint", "webhooks.one_endpoint.deliveries_per_second", ">=", 1000, "deliveries/s", "webhooks.one_endpoint.failures"),
    ("webhook deliveries/s across 50 endpoints", "webhooks.fifty_endpoints.deliveries_per_second", ">=", 3000, "deliveries/s", "webhooks.fifty_endpoints.failures"),
    ("healthy endpoints' rate beside a 1 s endpoint ÷ all healthy", "webhooks.slow_endpoint.healthy_vs_all_healthy", ">=", 0.9, "×", "webhooks.slow_endpoint.failures"),
    ("ingest single-event requests/s", "ingest.single_saturation.requests_per_second", ">=", 8000, "req/s", "ingest.single_saturation.failures"),
    ("ingest events/s in batches", "ingest.batches.events_per_second", ">=", 50000, "events/s", "ingest.batches.failures"),
    ("cached read p99 at 5,000 req/s offered (open loop)", "reads.cached.runs[5000].latency_ms.p99", "<=", 5, "ms", "reads.cached.runs[5000].failures"),
    ("uncached read p99 at 2,000 req/s offered (open loop)", "reads.uncached.runs[2000].latency_ms.p99", "<=", 10, "ms", "reads.uncached.runs[2000].failures"),
    ("ingest p99 at 5,000 req/s offered (open loop)", "ingest.single_fixed_rate[5000].latency_ms.p99", "<=", 25, "ms", "ingest.single_fixed_rate[5000].failures"),
    ("peak RSS of every API process", "memory_peaks.api", "<=", 80, "MiB", None),
    ("peak RSS of every projector process", "memory_peaks.projector", "<=", 150, "MiB", None),
    ("correctness checks that differ (projection and peers)", "checks_different", "<=", 0, "checks", None),
    # Issue 23: a 3-step workflow (http, record patch, email) in one `eventfold run`.
    ("workflow runs/s at saturation (http, record patch, email)", "workflows.saturation.runs_per_second", ">=", 500, "runs/s", "workflows.saturation.failures"),
    ("workflow trigger → first step p99 at half the saturation rate", "workflows.latency_at_half.trigger_to_first_step_ms.p99", "<=", 100, "ms", "workflows.latency_at_half.failures"),
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
    # An int stays one (a count reads "3", not "3.00").
    return node if isinstance(node, int | float) and not isinstance(node, bool) else None


def verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value, its row's failures and whether it is met.

    A value measured with failures in its row does not meet its target: the
    latencies and rates of the requests that went through say nothing of the
    ones that did not.
    """
    rows = []
    for label, path, op, target, unit, failures_path in TARGETS:
        value = lookup(doc, path)
        failures = lookup(doc, failures_path) if failures_path else None
        met = None if value is None or math.isnan(value) else (
            value >= target if op == ">=" else value <= target)  # fmt: skip
        if met and failures:
            met = False
        rows.append({"target": label, "goal": f"{op} {target:,g} {unit}", "measured": value,
                     "unit": unit, "failures": None if failures is None else int(failures),
                     "met": met})  # fmt: skip
    return rows


def write_json(doc: dict[str, Any], out: Path) -> None:
    """The whole result document."""
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def fmt(value: Any) -> str:
    """A figure as the tables show it: thousands separated, 1 or 2 decimals, ``—`` for none."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _failed(row: dict[str, Any]) -> str:
    """A row's failures: ``0``, or ``12 (HTTP 503: 10, …)`` with the commonest reasons."""
    n = row.get("failures")
    if n is None:
        return "—"
    if not n:
        return "0"
    reasons = ", ".join(f"{k}: {v}" for k, v in list(row.get("failure_reasons", {}).items())[:2])
    return f"**{n:,}** ({reasons})" if reasons else f"**{n:,}**"


def _lat(row: dict[str, Any]) -> str:
    lat = row.get("latency_ms") or {}
    return " | ".join(str(lat.get(k, "—")) for k in ("p50", "p90", "p99", "p99.9", "max"))


def markdown(doc: dict[str, Any]) -> str:
    """The human summary of one run: targets, the headline peer, phases, peers, correctness.

    Every row that sends requests says how many failed (and why): latencies and
    rates count only the requests that succeeded, so the failures are part of
    the figure.
    """
    lines = [f"# Benchmark run {doc['date']} ({doc['sizes']} sizes)", ""]
    prov = doc.get("provenance", {})
    lines += [f"Commit {describe(prov)}; machine: {doc['machine'].get('cpus')} cores,"
              f" Python {doc['machine'].get('python')}, PostgreSQL"
              f" {doc['machine'].get('postgres', '?')}. Memory in MiB.", ""]  # fmt: skip
    if doc.get("only"):
        lines += [f"A partial run: only {', '.join(doc['only'])} (`--only`).", ""]
    for phase, why in doc.get("errors", {}).items():
        lines += [f"**Phase {phase} failed** (its figures are not measured): {why}", ""]
    lines += ["## Targets", "", *target_lines(doc["targets"])]
    for section in (headline_lines, ingest_lines, projection_lines, end_to_end_section,
                    reads_lines, peer_lines, webhook_section, memory_lines, check_lines,
                    replay_lines, extra_lines):  # fmt: skip
        found = section(doc)
        if found:
            lines += ["", *found]
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in doc.get("plots", [])), ""]
    return "\n".join(lines)


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    """The targets table of one run: goal, measured value, its row's failures, met."""
    lines = ["| target | goal | measured | failures | met |", "|---|---|---|---|---|"]
    for row in targets:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        fails = "—" if row.get("failures") is None else f"{row['failures']:,}"
        lines.append(f"| {row['target']} | {row['goal']} | {fmt(row['measured'])} | {fails} |"
                     f" {met} |")  # fmt: skip
    return lines


def headline_lines(doc: dict[str, Any]) -> list[str]:
    """Eventfold's projection against the day-one batched peer, one sentence."""
    head = doc.get("headline")
    if not head:
        return []
    return ["## Headline: the projector against the day-one batched peer", "",
            f"Eventfold {fmt(head['eventfold_events_per_second'])} events/s, the batched"
            f" peer {fmt(head['peer_events_per_second'])} events/s: **{fmt(head['ratio'])}×**"
            f" (same topic, tables and indexes; the peer's indexes identical to the"
            f" projection's: {_yes(head.get('same_indexes'))}; the peer's records equal to the"
            f" fold of the log: {_yes(head.get('correct'))})."]  # fmt: skip


def _yes(flag: Any) -> str:
    return {True: "yes", False: "**no**"}.get(flag, "not checked")


def ingest_lines(doc: dict[str, Any]) -> list[str]:
    """Ingest: batches and single events, at saturation and at offered rates."""
    ing = doc.get("ingest")
    if not ing:
        return []
    lines = ["## Ingest (acks=all)", "",
             "| run | offered | achieved | failures | p50 ms | p90 | p99 | p99.9 | max |"
             " ingest CPU-s/1k |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    b = ing["batches"]
    lines.append(f"| batches (mean {b['batch_events']:.0f} events), {b['concurrency']} in"
                 f" flight | saturation | {b['events_per_second']:,.0f} ev/s | {_failed(b)} |"
                 f" {_lat(b)} | {_cpu(b, 'ingest')} |")  # fmt: skip
    for r in ing.get("batches_fixed_rate", []):
        lines.append(f"| batches (mean {r['batch_events']:.0f}) | {r['target_events_per_second']:,} ev/s |"
                     f" {r['achieved_events_per_second']:,.0f} ev/s | {_failed(r)} | {_lat(r)} |"
                     f" {_cpu(r, 'ingest')} |")  # fmt: skip
    s1 = ing["single_saturation"]
    lines.append(f"| single events, {s1['concurrency']} in flight | saturation |"
                 f" {s1['requests_per_second']:,.0f} req/s | {_failed(s1)} | {_lat(s1)} |"
                 f" {_cpu(s1, 'ingest')} |")  # fmt: skip
    for r in ing["single_fixed_rate"]:
        lines.append(f"| single events | {r['target_rate']:,.0f} req/s |"
                     f" {r['achieved_rate']:,.0f} req/s | {_failed(r)} | {_lat(r)} |"
                     f" {_cpu(r, 'ingest')} |")  # fmt: skip
    lines += ["", "Offered-rate rows are open loop, each request timed from its scheduled start;"
              " saturation rows are closed loop, timed from the send."]  # fmt: skip
    return lines


def projection_lines(doc: dict[str, Any]) -> list[str]:
    """The projector's catch-up: rate, CPU, peak memory."""
    proj = doc.get("projection")
    if not proj:
        return []
    p = proj["processes"]["projector"]
    return ["## Projection catch-up (exactly-once)", "",
            f"{proj['events']:,} events in {proj['seconds']} s = **{proj['events_per_second']:,.0f}"
            f" events/s**, {p['cpu_seconds_per_1000_events']} CPU-s per 1,000 events,"
            f" peak RSS {p['peak_rss_mib']} MiB."]  # fmt: skip


def end_to_end_section(doc: dict[str, Any]) -> list[str]:
    """Write-to-visible, when measured."""
    return end_to_end_lines(doc["end_to_end"]) if doc.get("end_to_end") else []


def reads_lines(doc: dict[str, Any]) -> list[str]:
    """Reads: cached, uncached and lists at offered rates (open loop) and at saturation."""
    reads = doc.get("reads")
    if not reads:
        return []
    lines = ["## Reads (one API process, open loop from scheduled starts)", "",
             "| kind | offered | achieved req/s | failures | p50 ms | p90 | p99 | p99.9 | max |"
             " generator lag p99 ms | API CPU-s/1k | API peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in ("cached", "uncached", "lists"):
        for r in reads.get(kind, {}).get("runs", []):
            api = r.get("processes", {}).get("api", {})
            offered = f"{r['target_rps']:,} req/s" if r.get("target_rps") else (
                f"saturation ({r.get('connections')} conns)")  # fmt: skip
            lines.append(f"| {kind} | {offered} | {fmt(r.get('achieved_rps'))} |"
                         f" {_failed(r)} | {_lat(r)} |"
                         f" {(r.get('dispatch_lag_ms') or {}).get('p99', '—')} |"
                         f" {fmt(api.get('cpu_seconds_per_1000_events'))} |"
                         f" {fmt(api.get('peak_rss_mib'))} |")  # fmt: skip
    return lines


def webhook_section(doc: dict[str, Any]) -> list[str]:
    """Webhooks, when measured."""
    return webhook_lines(doc["webhooks"]) if doc.get("webhooks") else []


def memory_lines(doc: dict[str, Any]) -> list[str]:
    """Peak RSS of every serving process, per phase."""
    mem = doc.get("memory")
    if not mem:
        return []
    return ["## Peak memory of every serving process (MiB)", "",
            "| process (phase) | peak RSS MiB |", "|---|---|",
            *[f"| {name} | {fmt(v)} |" for name, v in mem.items()]]  # fmt: skip


def check_lines(doc: dict[str, Any]) -> list[str]:
    """Correctness after each phase."""
    checks = doc.get("checks")
    if not checks:
        return []
    lines = ["## Correctness after each phase", ""]
    for phase, verdict in checks.items():
        lines.append(f"- {phase}: {'equal' if verdict['equal'] else '**DIFFERENT**'} "
                     f"({verdict['records']:,} records; missing {verdict['missing']},"
                     f" extra {verdict['extra']}, different {verdict['different']})")  # fmt: skip
    return lines


def replay_lines(doc: dict[str, Any]) -> list[str]:
    """The rebuilds: one tenant and all, from Kafka and from the archive."""
    rep = doc.get("replay")
    if not rep:
        return []
    lines = ["## Replay", ""]
    if not rep.get("available"):
        return [*lines, f"Not measured: {rep.get('why', 'not run')}."]
    lines += ["| rebuild | exit | events | seconds | events/s | from the archive | log records read |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label in ("one_tenant_kafka", "one_tenant_archive", "all_tenants_kafka",
                  "all_tenants_archive"):  # fmt: skip
        r = rep.get(label, {})
        lines.append(f"| {label.replace('_', ' ')} | {r.get('exit')} | {r.get('events', 0):,} |"
                     f" {r.get('seconds')} | {fmt(r.get('events_per_second'))} |"
                     f" {fmt(r.get('archive_events'))} | {fmt(r.get('log_records_read'))} |")  # fmt: skip
    return lines


def extra_lines(doc: dict[str, Any]) -> list[str]:
    """Analytics, integrations, workflows, tracing and encryption, when measured."""
    lines: list[str] = []
    for key, render in (("analytics", analytics_lines), ("integrations", integrations_lines),
                        ("workflows", workflows_lines), ("tracing", tracing_lines),
                        ("encryption", encryption_lines)):  # fmt: skip
        if doc.get(key):
            lines += ["", *render(doc[key])] if lines else render(doc[key])
    return lines


def workflows_lines(w: dict[str, Any]) -> list[str]:
    """A 3-step workflow (http, record patch, email): runs/s at saturation, and trigger →
    first step latency at half of it."""
    sat, half = w["saturation"], w["latency_at_half"]
    lat = half["trigger_to_first_step_ms"]
    process = w.get("process", "eventfold run (one process)")
    return [f"## Workflows (http → record patch → email; {process})", "",
            "| runs | runs/s (processed) | runs/s (projected) | failures |"
            " at runs/s | first step p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|---|---|",
            f"| {sat['runs']:,} | {fmt(sat['runs_per_second'])} |"
            f" {fmt(sat.get('projected_runs_per_second'))} | {_failures(sat)} |"
            f" {fmt(half['rate_per_second'])} | {fmt(lat['p50'])} | {fmt(lat['p99'])} |"
            f" {_failures(half)} |", "",
            "A failure is a trigger the gateway did not accept or a run that ended failed or"
            " cancelled; a row with failures does not meet its target."]  # fmt: skip


_CPU_LABELS = {
    "gateway_cpu_ms_per_1000_batched_events": "gateway CPU ms per 1,000 batched events",
    "gateway_cpu_ms_per_single_request": "gateway CPU ms per single-event request",
    "projector_cpu_seconds_per_1000_events": "projector CPU s per 1,000 events",
}


def _overhead_lines(t: dict[str, Any], title: str, off: str, on: str) -> list[str]:
    """CPU per unit of work of two runs of the same load, side by side."""
    rows = [
        f"| {_CPU_LABELS.get(name, name)} | {o['off']} | {o['on']} | {_percent(o['percent'])} |"
        f" {', '.join(_percent(p) for p in o.get('pairs', [o['percent']]))} |"
        for name, o in t["overhead"].items()
    ]
    pairs = t.get("pairs", 1)
    runs = f"{pairs} runs each way, alternating (medians)" if pairs > 1 else "one run each way"
    return [title, "",
            f"{t['batch_events']:,} batched events and {t['single_requests']:,} single-event"
            f" requests per run, {runs}; failed requests: {t['failures']:,}.", "",
            f"| CPU per unit of work | {off} | {on} | change | each pair |",
            "|---|---|---|---|---|", *rows]  # fmt: skip


def tracing_lines(t: dict[str, Any]) -> list[str]:
    """OpenTelemetry's cost: CPU per unit of work with tracing off and on."""
    return _overhead_lines(t, "## Tracing overhead (OpenTelemetry off, then on)", "off", "on")


def encryption_lines(t: dict[str, Any]) -> list[str]:
    """Crypto-shredding's cost: CPU per event in a plain, then a personal collection."""
    return _overhead_lines(
        t, "## Encryption overhead (a plain collection, then a personal one; goal ≤ 20 %)",
        "plain", "personal",
    )  # fmt: skip


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+} %"


def _failures(row: dict[str, Any]) -> str:
    """A workflow row's failures; files from before they were counted have their parts."""
    if "failures" in row:
        return f"{row['failures']:,}"
    return f"{row.get('failed', 0) + row.get('write_errors', 0):,}"


def analytics_lines(a: dict[str, Any]) -> list[str]:
    """One faust analytics worker: throughput and event → count delay."""
    return ["## Analytics (faust-streaming, one worker, exactly-once)", "",
            "| events | partitions | events/s | event → count readable p50 ms | max ms |",
            "|---|---|---|---|---|",
            f"| {a['events']:,} | {a.get('partitions', '—')} | {fmt(a['events_per_second'])} |"
            f" {a['delay_ms']['p50']} | {a['delay_ms']['max']} |"]  # fmt: skip


def integrations_lines(i: dict[str, Any]) -> list[str]:
    """An integration's initial sync from a fast local source, and change → readable."""
    sync, change = i["initial_sync"], i["change_to_readable_ms"]
    return ["## Integrations (http-poll from a local source)", "",
            "| items | page size | published items/s | readable items/s |"
            " change → readable p50 ms | p95 | max |", "|---|---|---|---|---|---|---|",
            f"| {sync['items']:,} | {sync['page_size']} | {fmt(sync['published_items_per_second'])} |"
            f" {fmt(sync['readable_items_per_second'])} | {change['p50']} | {change['p95']} |"
            f" {change['max']} |"]  # fmt: skip


def rebalance_lines(r: dict[str, Any]) -> list[str]:
    """One of two projectors stopped under an open-loop write load (benchmarks/rebalance.py)."""
    lines = ["## A rebalance: one of two projectors stopped under load", "",
             f"{r['process']}, {r['partitions']} partitions, {r['rate_per_s']:g} writes/s;"
             f" one projector stopped {r['kill_at_s']:g} s into {r['seconds']:g} s;"
             f" Kafka session {r.get('session_timeout_s', 10.0):g} s."
             " Write → visible from each write's scheduled start to its projection's commit.",
             "",
             "| stop | before: p50 ms | p99 ms | pause (longest after the stop) s |"
             " p99 back within 2x after s | failed writes |", "|---|---|---|---|---|---|"]  # fmt: skip
    for sc in r["scenarios"]:
        back = sc["back_within_2x_p99_after_s"]
        lines.append(f"| {sc['signal']} | {sc['baseline_p50_ms']} | {sc['baseline_p99_ms']} |"
                     f" {sc['pause_s']} | {'never' if back is None else back} |"
                     f" {sc['failed']:,} of {sc['writes']:,} |")  # fmt: skip
    return lines


def tenant_move_lines(r: dict[str, Any]) -> list[str]:
    """A tenant moved between database servers under open-loop writes
    (benchmarks/tenant_move.py)."""
    m = r["move"]
    lines = ["## A tenant moved between database servers under load", "",
             f"{r['process']}; {r['rate_per_s']:g} writes/s over three tenants for"
             f" {r['seconds']:g} s; the moved tenant had {r['records']:,} records"
             f" ({m['rows']:,} rows copied, {m['from']} → {m['to']}); the projectors of both"
             f" servers waited {m['handover_seconds']:g} s for the handover; the move took"
             f" {m['seconds']:g} s with its grace period. Write → readable: from each write's"
             " scheduled start until a read with its consistency token returns it.",
             "",
             "| tenant | phase | writes | failed | p50 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in r["tenants"].values():
        for phase in ("before", "during", "after"):
            f = t[phase]
            lines.append(f"| {t['role']} | {phase} the move | {f['writes']:,} | {f['failed']:,} |"
                         f" {f['p50_ms']} | {f['p99_ms']} | {f['max_ms']} |")  # fmt: skip
    return lines


def _cpu(row: dict[str, Any], proc: str) -> str:
    return fmt(row.get("processes", {}).get(proc, {}).get("cpu_seconds_per_1000_events"))


def peer_lines(doc: dict[str, Any]) -> list[str]:
    """The peers table: the batched peer first (the headline), every row checked."""
    if not doc.get("peer_table"):
        return []
    lines = ["## Peers (same topic, same PostgreSQL, same fold)", "",
             "| peer | phase | peer events/s | Eventfold events/s | Eventfold ÷ peer |"
             " CPU-s/1k peer | CPU-s/1k Eventfold | peer peak MiB | correct |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc.get("peer_table", []):
        lines.append(
            f"| {row['peer']} | {row['phase']} | {fmt(row['peer_rate'])} | {fmt(row['eventfold_rate'])}"
            f" | {fmt(row['ratio'])}× | {fmt(row['peer_cpu'])} | {fmt(row['eventfold_cpu'])} |"
            f" {fmt(row['peer_peak_mib'])} | {row['correct']} |"
        )  # fmt: skip
    return lines


def webhook_lines(wh: dict[str, Any]) -> list[str]:
    """The webhook scenarios: deliveries/s of a drained backlog, and every failure kind."""
    lines = ["## Webhook delivery (a backlog drained by one notifier; private database)", "",
             "| scenario | endpoints | delivered / expected | deliveries/s | failures |"
             " failed attempts | undelivered | out of order | duplicates | notifier CPU-s/1k |"
             " notifier peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, label in (("one_endpoint", "one endpoint"), ("fifty_endpoints", "50 endpoints"),
                       ("slow_endpoint", "50 endpoints, one answering in 1 s")):  # fmt: skip
        r = wh.get(key)
        if not r:
            continue
        n = r.get("processes", {}).get("notifier", {})
        lines.append(f"| {label} | {r['endpoints']} | {r['delivered']:,} / {r['expected']:,} |"
                     f" {fmt(r['deliveries_per_second'])} | {r['failures']:,} |"
                     f" {r['failed_attempts']:,} | {r['undelivered']:,} | {r['out_of_order']:,} |"
                     f" {r['duplicates']:,} | {fmt(n.get('cpu_seconds_per_1000_events'))} |"
                     f" {fmt(n.get('peak_rss_mib'))} |")  # fmt: skip
    slow = wh.get("slow_endpoint", {})
    if slow.get("healthy"):
        lines += ["", f"Beside the slow endpoint, the 49 healthy ones received"
                  f" {fmt(slow['healthy']['deliveries_per_second'])} deliveries/s"
                  f" ({fmt(slow.get('healthy_vs_all_healthy'))}× the all-healthy run); the slow"
                  f" one {slow['slow']['delivered']:,} of {slow['slow']['expected']:,}."]  # fmt: skip
    return lines


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
        " included). A pair fails when either leg is not answered so.",
        "",
        "| load | achieved | failures | p50 ms | p90 | p99 | p99.9 | max | write p50 / p99 |"
        " read p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [{**sat, "achieved_rate": sat["pairs_per_second"]}, *e2e["runs"]]:
        w, rd = r["write_ms"], r["read_ms"]
        load = f"{r['load_share']:.0%}" if "load_share" in r else "saturation"
        lines.append(f"| {load} | {r['achieved_rate']:,.0f}/s | {_failed(r)} | {_lat(r)} |"
                     f" {w['p50']} / {w['p99']} | {rd['p50']} / {rd['p99']} |")  # fmt: skip
    return lines


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
    # A partial run (--only) may have none of these: no empty plot then.
    if any(cdf for _, cdf in series):
        ax.legend(fontsize=7)
        save(fig, "latency")
    else:
        plt.close(fig)

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
    if any(doc.get("memory_samples", {}).values()):
        lines(doc["memory_samples"], "seconds into the phase", "RSS (MiB)",
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
