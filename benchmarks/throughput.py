"""Throughput of the ingest gateway and the projector on this machine.

Starts a real ``eventfold serve ingest`` process on a private topic, loads it
with batches and with single-event requests from this process (aiohttp,
closed loop with fixed concurrency), then lets the projector catch up on the
whole topic from scratch and times it. Requests not answered 202 are counted
as failures (with their status), never in the latencies or rates. Results go to
stdout and to ``benchmarks/results/<date>-throughput.json`` (with the commit).

    make bench                           # defaults below
    .venv/bin/python -m benchmarks.throughput --batch-events 200000 --single-requests 20000

``--personal both`` measures what encrypting personal data costs the same way: the
tenants' ``orders`` a plain collection, then a personal one (``encryption_overhead``).

``--trace both`` measures what tracing costs: the same load twice on fresh topics, without
and with OpenTelemetry on in the gateway and the projector, and the CPU per event of each
side by side (``tracing_overhead``); ``--trace on`` runs only the traced one. The spans go
through the SDK's batch span processor to an exporter that drops them: what is measured
is Eventfold's instrumentation and the SDK, not an exporter's serialisation (the console
exporter adds ~120 µs per span on this machine; OTLP's protobuf its own, and a network).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import provenance
from benchmarks.private import private_settings
from devstack import ensure_topics
from eventfold import cachefill, tracing
from eventfold.auth import issue_token
from eventfold.clients import open_pool
from eventfold.db import fetch_checkpoints
from eventfold.settings import Settings


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_event(tenant_no: int, i: int) -> dict[str, Any]:
    """One ~700-byte event; keys skewed so a few records are hot."""
    key = i % 50 if i % 5 == 0 else i % 5000
    return {
        "specversion": "1.0",
        "id": f"bench-{tenant_no}-{i}",
        "source": "bench/throughput",
        "type": "record.upserted",
        "subject": f"orders/o{key}",
        "data": {
            "customer": f"customer-{i % 997:04d}",
            "status": ("new", "paid", "shipped", "delivered")[i % 4],
            "total_cents": (i * 7919) % 100_000,
            "currency": "EUR",
            "lines": [
                {"sku": f"SKU-{(i + n) % 10_000:05d}", "qty": 1 + n, "price_cents": 1999 + n}
                for n in range(4)
            ],
            "note": "x" * 240,
        },
    }


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) ``pid`` has used so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/health/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"ingest process at {base} did not become ready")


#: ``eventfold serve ingest`` with tracing on (:func:`trace_in_process`), as a command line.
TRACED_GATEWAY = (
    "import sys\n"
    "from benchmarks.throughput import trace_in_process\n"
    "from entrypoints.cli import main\n"
    "trace_in_process()\n"
    "sys.exit(main(['serve', 'ingest']))\n"
)


class _Dropped:
    """A span exporter that drops every span (the SDK's SpanExporter interface)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held."""
        return True


def trace_in_process() -> None:
    """Tracing on in this process through the SDK's batch processor; the spans dropped.

    (``OTEL_TRACES_EXPORTER`` unset, the CLI's own configuration leaves this on.)
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))  # type: ignore[arg-type]
    tracing.enable(provider)


#: The projector under trace, as ``TRACED_GATEWAY`` is the gateway.
TRACED_PROJECTOR = (
    "import sys\n"
    "from benchmarks.throughput import trace_in_process\n"
    "from entrypoints.cli import main\n"
    "trace_in_process()\n"
    "sys.exit(main(['process', 'projector', '--burst']))\n"
)


async def _project(
    settings: Settings, env: dict[str, str], label: str, *, traced: bool = False
) -> dict[str, Any]:
    """``eventfold process projector --burst`` to the end of the topic: its rate, and its
    CPU per event from its first committed batch to its exit (start-up left out).

    A process of its own, as in production (its heap and collector settings its own:
    run inside this one, it shared the load generator's heap and paid for it).
    """
    pool = await open_pool(settings)
    consumer = f"{settings.consumer_group_prefix}.projector"

    async def position() -> int:
        async with pool.acquire() as conn:
            return sum((await fetch_checkpoints(conn, consumer, settings.events_topic)).values())

    try:
        before = await position()
        exe = str(Path(sys.executable).with_name("eventfold"))
        argv = [sys.executable, "-c", TRACED_PROJECTOR] if traced else [
            exe, "process", "projector", "--burst"
        ]  # fmt: skip
        cpu0 = _children_cpu()
        proc = await asyncio.create_subprocess_exec(
            *argv, env={**env, "EVENTFOLD_HTTP_PORT": str(_free_port())},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # Measured from the first batch it commits: what its start-up took is not per event.
        first, cpu_first, t0 = before, 0.0, time.perf_counter()
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.02)
            if proc.returncode is None and (now := await position()) > before:
                first, t0 = now, time.perf_counter()
                cpu_first = process_cpu_seconds(proc.pid)
                break
        code = await proc.wait()
        elapsed = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0 - cpu_first
        if code != 0:
            raise SystemExit(f"projector ({label}) exited with {code}")
        after = await position()
    finally:
        await pool.close()
    events = after - first
    print(
        f"  {label}: {after - before:,} events, {elapsed:.2f} s after the first batch", flush=True
    )
    return {
        "events": events,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed, 1) if elapsed else None,
        "projector_cpu_seconds_per_1000_events": round(1000 * cpu / max(events, 1), 4),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The load once per ``--trace``/``--personal`` choice; with both, the overhead beside them."""
    personal = getattr(args, "personal", "off")
    pairs = getattr(args, "pairs", 1)
    if args.trace == "both":
        untraced, traced = await _alternate(
            args, pairs, ("without tracing", {"traced": False}), ("with tracing", {"traced": True})
        )
        return {
            "untraced": untraced,
            "traced": traced,
            "tracing_overhead": overhead(untraced, traced),
        }
    if personal == "both":
        on = args.trace == "on"
        plain, sealed = await _alternate(
            args, pairs, ("plain collection", {"traced": on}),
            ("personal collection (data encrypted per record)", {"traced": on, "personal": True}),
        )  # fmt: skip
        return {"plain": plain, "personal": sealed, "encryption_overhead": overhead(plain, sealed)}
    return await run_once(args, traced=args.trace == "on", personal=personal == "on")


async def _alternate(
    args: argparse.Namespace,
    pairs: int,
    off: tuple[str, dict[str, bool]],
    on: tuple[str, dict[str, bool]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``pairs`` runs of each side, one side then the other: what drifts on the machine
    meanwhile (its load, its caches) falls on both sides alike."""
    offs: list[dict[str, Any]] = []
    ons: list[dict[str, Any]] = []
    for n in range(pairs):
        for (label, kwargs), runs in ((off, offs), (on, ons)):
            print(f"== {label} ({n + 1} of {pairs})", flush=True)
            runs.append(await run_once(args, **kwargs))
    return offs, ons


#: The CPU figures an overhead compares: (name, part of a run, key in it).
_CPU_FIGURES = (
    ("gateway_cpu_ms_per_1000_batched_events", "ingest_batches", "gateway_cpu_ms_per_1000_events"),
    ("gateway_cpu_ms_per_single_request", "ingest_single", "gateway_cpu_ms_per_request"),
    ("projector_cpu_seconds_per_1000_events", "projector_catch_up",
     "projector_cpu_seconds_per_1000_events"),
)  # fmt: skip


def overhead(offs: list[dict[str, Any]], ons: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU per unit of work of runs side by side: each side's median over its runs, the
    change between the medians in per cent, and each pair's own change (the spread)."""

    def percent(a: float, b: float) -> float | None:
        return round(100 * (b - a) / a, 1) if a else None

    out: dict[str, Any] = {}
    for name, part, key in _CPU_FIGURES:
        off = [run[part][key] for run in offs]
        on = [run[part][key] for run in ons]
        a, b = statistics.median(off), statistics.median(on)
        out[name] = {"off": a, "on": b, "percent": percent(a, b),
                     "pairs": [percent(x, y) for x, y in zip(off, on, strict=True)]}  # fmt: skip
        print(f"  {name}: {a} -> {b} ({out[name]['percent']:+} %; pairs"
              f" {out[name]['pairs']})", flush=True)  # fmt: skip
    return out


async def run_once(
    args: argparse.Namespace, *, traced: bool, personal: bool = False
) -> dict[str, Any]:
    """One measurement on fresh private topics, with tracing on or off in the processes;
    with ``personal``, the tenants' ``orders`` are a personal collection (encrypted)."""
    run_id = uuid.uuid4().hex[:6]
    settings = private_settings(run_id, partitions=args.partitions)
    await ensure_topics(settings)
    port = _free_port()
    env = {
        # Tracing as this run says, whatever OTEL_* the caller has set.
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    exe = str(Path(sys.executable).with_name("eventfold"))
    # The gateway under test runs in its own process, as in production.
    gateway = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, "-c", TRACED_GATEWAY] if traced else [exe, "serve", "ingest"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        conn = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=conn) as session:
            await _wait_ready(session, base)
            admin = {"Authorization": "Bearer " + issue_token(
                settings.jwt_secret, tenant="*", roles=["platform-admin"]
            )}  # fmt: skip
            tenants = [f"bench_{run_id}_{n}" for n in range(args.tenants)]
            for t in tenants:
                # Limits far above what one machine can send: this measures throughput.
                limits = {"requests_per_second": 1_000_000, "burst": 1_000_000}
                async with session.post(
                    f"{base}/v1/tenants", json={"id": t, "name": t, "limits": limits}, headers=admin
                ) as r:
                    assert r.status == 202, await r.text()
            print("projecting the tenants…", flush=True)
            await _project(settings, env, "tenant creation")
            if personal:
                for t in tenants:
                    async with session.patch(
                        f"{base}/v1/tenants/{t}", json={"personal_collections": ["orders"]},
                        headers=admin,
                    ) as r:  # fmt: skip
                        assert r.status == 202, await r.text()
                await _project(settings, env, "personal collections")
            tokens = {
                t: {
                    "Authorization": "Bearer "
                    + issue_token(settings.jwt_secret, tenant=t, roles=["writer"], ttl_seconds=3600)
                }
                for t in tenants
            }
            cpu0 = process_cpu_seconds(gateway.pid)
            result["ingest_batches"] = await _batches(session, base, tenants, tokens, args)
            cpu1 = process_cpu_seconds(gateway.pid)
            result["ingest_single"] = await _singles(session, base, tenants, tokens, args)
            cpu2 = process_cpu_seconds(gateway.pid)
            # The gateway's own CPU (the load generator shares the machine, not the process).
            batches, singles = result["ingest_batches"], result["ingest_single"]
            batches["gateway_cpu_ms_per_1000_events"] = round(
                1e6 * (cpu1 - cpu0) / max(batches["events"], 1), 1
            )
            singles["gateway_cpu_ms_per_request"] = round(
                1000 * (cpu2 - cpu1) / max(singles["requests"], 1), 3
            )
            print(
                f"  gateway CPU: {batches['gateway_cpu_ms_per_1000_events']} ms per 1,000 "
                f"batched events, {singles['gateway_cpu_ms_per_request']} ms per single request",
                flush=True,
            )
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(20)
    print("projector catch-up from an empty projection…", flush=True)
    result["projector_catch_up"] = await _project(settings, env, "catch-up", traced=traced)
    await _forget_run(settings, tenants)
    return result


async def _forget_run(settings: Settings, tenants: list[str]) -> None:
    """Drop the run's tenants from Redis (their dedup memory above all), as a deleted
    tenant's: runs one after another filled the development Redis (512 MB, no
    eviction), and a gateway whose dedup writes fail skips them, so later runs
    measured less work."""
    await cachefill.purge_tenants(settings, set(tenants))


async def _batches(
    session: aiohttp.ClientSession,
    base: str,
    tenants: list[str],
    tokens: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    size = args.batch_size
    n_batches = args.batch_events // size
    bodies = [
        (
            tenants[b % len(tenants)],
            orjson.dumps([make_event(b % len(tenants), b * size + i) for i in range(size)]),
        )
        for b in range(n_batches)
    ]
    payload_bytes = sum(len(body) for _, body in bodies) / (n_batches * size)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            tenant, body = queue.get_nowait()
            t0 = time.perf_counter()
            async with session.post(
                f"{base}/v1/tenants/{tenant}/events",
                data=body,
                headers={**tokens[tenant], "Content-Type": "application/json"},
            ) as r:
                await r.read()
            if r.status != 202:
                failures[f"HTTP {r.status}"] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    print(
        f"ingest: {n_batches} batches of {size} events, {args.concurrency} in flight…", flush=True
    )
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - t0
    events = len(latencies) * size
    print(f"  {events / elapsed:,.0f} events/s, {failures.total()} batches failed", flush=True)
    return {
        "events": events,
        "batches": n_batches,
        "failures": failures.total(),
        "failure_reasons": dict(failures),
        "batch_size": size,
        "concurrency": args.concurrency,
        "mean_event_bytes": round(payload_bytes),
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed, 1),
        "batch_latency_ms": _pcts(latencies),
    }


async def _singles(
    session: aiohttp.ClientSession,
    base: str,
    tenants: list[str],
    tokens: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    total = args.single_requests
    bodies = [
        (tenants[i % len(tenants)], orjson.dumps(make_event(i % len(tenants), 10_000_000 + i)))
        for i in range(total)
    ]
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    it = iter(bodies)

    async def worker() -> None:
        for tenant, body in it:
            t0 = time.perf_counter()
            async with session.post(
                f"{base}/v1/tenants/{tenant}/events",
                data=body,
                headers={**tokens[tenant], "Content-Type": "application/json"},
            ) as r:
                await r.read()
            if r.status != 202:
                failures[f"HTTP {r.status}"] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    print(
        f"ingest: {total} single-event requests, {args.single_concurrency} in flight…", flush=True
    )
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.single_concurrency)))
    elapsed = time.perf_counter() - t0
    ok = len(latencies)
    print(f"  {ok / elapsed:,.0f} requests/s, {failures.total()} failed", flush=True)
    return {
        "requests": total,
        "ok": ok,
        "failures": failures.total(),
        "failure_reasons": dict(failures),
        "concurrency": args.single_concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(ok / elapsed, 1),
        "latency_ms": _pcts(latencies),
    }


def _pcts(values: list[float]) -> dict[str, float]:
    return {
        name: round(1000 * percentile(values, q), 2)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    }


def main() -> None:
    """Parse arguments, run, print and save the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tenants", type=int, default=5)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--batch-events", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--single-requests", type=int, default=10_000)
    p.add_argument("--single-concurrency", type=int, default=64)
    p.add_argument(
        "--trace",
        choices=["off", "on", "both"],
        default="off",
        help="OpenTelemetry in the processes under test; both: the overhead (see above)",
    )
    p.add_argument(
        "--personal",
        choices=["off", "on", "both"],
        default="off",
        help="the events' collection personal (data encrypted per record); both: the overhead",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="with --trace/--personal both: runs of each side, alternating (medians compared)",
    )
    args = p.parse_args()
    prov = provenance.stamp()
    result = asyncio.run(run(args))
    doc = {"benchmark": "throughput", "provenance": prov, "args": vars(args), "results": result}
    out = provenance.save(doc, "throughput")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
