"""Read latency and throughput of one API process: single records cached and uncached, lists.

Seeds one tenant with records through a real ``eventfold serve ingest``
process and the projector, then starts a real ``eventfold serve api`` process
and loads it with the suite's own HTTP/1.1 load generator
(:mod:`benchmarks.suite.openloop`), every request with a bearer token:

- **cached**: ``GET …/records/{id}`` (uniformly random ids), the cache warmed
  first (every record read once), so reads are answered by Redis;
- **uncached**: the same with the API process restarted with
  ``EVENTFOLD_CACHE_ENABLED=false``, so every read goes to PostgreSQL under the
  tenant's role;
- **lists**: ``GET …/records?…`` list queries (always PostgreSQL), a random
  one of :data:`LIST_QUERIES` per request: the first page in id and in
  ``-updated_at`` order, later pages (cursors taken from the API first), a
  filter on a common value and one on a rare value.

Each at fixed rates **open loop** (wrk2-style: request ``i`` is scheduled at
``i / rate`` whatever the answers before it, and its latency counts from that
scheduled start, so queueing shows; errors, non-2xx answers and timeouts are
counted as failures, never dropped), then at saturation (a closed loop of
``--connections`` connections: the throughput ceiling). Per run: the API
process's CPU per request and peak RSS (MiB), and the generator's own dispatch
lag. The cache hit ratio comes from the API process's own ``/metrics``.
Results go to stdout and to ``benchmarks/results/<date>-reads.json``.

    .venv/bin/python -m benchmarks.reads --records 500 --seconds 1 --rates 200   # smoke
    .venv/bin/python -m benchmarks.reads --records 20000 --seconds 20 --rates 1000,5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from benchmarks import provenance
from benchmarks.private import private_settings
from benchmarks.suite import openloop
from benchmarks.suite.procstat import ProcWatch
from benchmarks.throughput import _free_port, _project, _wait_ready, make_event
from devstack import ensure_topics
from eventfold.auth import issue_token
from eventfold.settings import Settings

EXE = str(Path(sys.executable).with_name("eventfold"))
#: The list queries of the "lists" kind (after the collection's ``records``); seeded
#: records have ``status`` one of four values and ``customer`` one of 997.
LIST_QUERIES = (
    "?limit=50",
    "?limit=50&order=-updated_at",
    "?limit=50&filter[status]=paid",
    "?limit=20&filter[customer]=customer-0042",
)
#: Later pages of the first query, by cursor, mixed in with the queries above.
LIST_PAGES = 4


def _env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
        **extra,
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def _seed(settings: Settings, tenant: str, records: int) -> None:
    """Create the tenant and ``records`` records through a real gateway, then project them."""
    port = _free_port()
    gateway = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [EXE, "serve", "ingest"], env=_env(settings, port), stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, base)
            admin = issue_token(settings.jwt_secret, tenant="*", roles=["platform-admin"])
            async with session.post(
                f"{base}/v1/tenants",
                json={
                    "id": tenant,
                    "name": tenant,
                    "limits": {"requests_per_second": 1e6, "burst": 1_000_000},
                },
                headers={"Authorization": f"Bearer {admin}"},
            ) as r:
                assert r.status == 202, await r.text()
            # The gateway accepts events of known tenants.
            await _project(settings, _env(settings, port), "tenant")
            writer = issue_token(settings.jwt_secret, tenant=tenant, roles=["writer"])
            headers = {"Authorization": f"Bearer {writer}", "Content-Type": "application/json"}
            for start in range(0, records, 500):
                batch = []
                for i in range(start, min(records, start + 500)):
                    ev = make_event(0, i)
                    ev["subject"] = f"orders/o{i}"
                    batch.append(ev)
                async with session.post(
                    f"{base}/v1/tenants/{tenant}/events", data=orjson.dumps(batch), headers=headers
                ) as r:
                    assert r.status == 202, await r.text()
    finally:
        _stop(gateway)
    await _project(settings, _env(settings, port), "seed")


async def _metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    m = re.search(rf'^{name}\{{operation="get"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def _warm(session: aiohttp.ClientSession, base: str, prefix: str, token: str, n: int) -> None:
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with (
            sem,
            session.get(f"{base}{prefix}o{i}", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status == 200, await r.text()

    await asyncio.gather(*(one(i) for i in range(n)))


async def _list_paths(
    session: aiohttp.ClientSession, base: str, prefix: str, token: str
) -> list[str]:
    """:data:`LIST_QUERIES` and later pages of the first, each answered 200 once."""
    headers = {"Authorization": f"Bearer {token}"}
    paths = [prefix + query for query in LIST_QUERIES]
    for path in list(paths):
        async with session.get(base + path, headers=headers) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        assert doc["items"], f"{path} listed nothing"
    cursor_path = paths[0]
    for _ in range(LIST_PAGES):
        async with session.get(base + cursor_path, headers=headers) as r:
            assert r.status == 200, await r.text()
            cursor = (await r.json())["next"]
        cursor_path = f"{paths[0]}&after={quote(cursor, safe='')}"
        paths.append(cursor_path)
    return paths


def _requests(host: str, token: str, paths: list[str], seed: int = 11) -> Callable[[int], bytes]:
    """Request ``i``: a GET of one of ``paths`` picked at random (the bytes built once each)."""
    built = [openloop.get_request(host, p, {"Authorization": f"Bearer {token}"}) for p in paths]
    rng = random.Random(seed)
    return lambda _i: built[rng.randrange(len(built))]


async def _load(
    port: int, requests: Callable[[int], bytes], api_pid: int, *, rate: int | None,
    seconds: float, connections: int,
) -> dict[str, Any]:  # fmt: skip
    """One run: open loop at ``rate`` (or closed loop at saturation), with the API's CPU and RSS."""
    watch = ProcWatch({"api": api_pid, "load-generator": os.getpid()}, interval=0.5)
    watch.start()
    if rate is None:
        run = await openloop.closed_loop("127.0.0.1", port, requests, connections, seconds)
    else:
        run = await openloop.open_loop("127.0.0.1", port, requests, rate, seconds)
    run["processes"] = await watch.stop(max(run["ok"], 1))
    run.pop("cdf", None)
    return run


async def _phase(
    settings: Settings,
    tenant: str,
    args: argparse.Namespace,
    *,
    cached: bool,
    lists: bool = False,
) -> dict[str, Any]:
    port = _free_port()
    env = _env(settings, port, EVENTFOLD_CACHE_ENABLED="true" if cached else "false")
    api = subprocess.Popen(  # noqa: ASYNC220 - one process per phase, before its load
        [EXE, "serve", "api"], env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    prefix = f"/v1/tenants/{tenant}/collections/orders/records/"
    token = issue_token(settings.jwt_secret, tenant=tenant, roles=["reader"], ttl_seconds=7200)
    label = "lists" if lists else "cached" if cached else "uncached"
    out: dict[str, Any] = {"runs": []}
    paths: list[str] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, base)
            if lists:
                paths = await _list_paths(session, base, prefix.removesuffix("/"), token)
                out["queries"] = paths
            else:
                print(f"{label}: warming {args.records} records…", flush=True)
                await _warm(session, base, prefix, token, args.records)
            hits0 = await _metric(session, base, "eventfold_cache_hits_total")
            miss0 = await _metric(session, base, "eventfold_cache_misses_total")
            requests = _requests(f"127.0.0.1:{port}", token, paths or [
                f"{prefix}o{i}" for i in range(args.records)])  # fmt: skip
            for rate in [*args.rates, None]:
                run = await _load(port, requests, api.pid, rate=rate, seconds=args.seconds,
                                  connections=args.connections)  # fmt: skip
                print(f"  {label} @ {rate or 'saturation'}: {_brief(run)}", flush=True)
                out["runs"].append(run)
            if not lists:
                hits = await _metric(session, base, "eventfold_cache_hits_total") - hits0
                misses = await _metric(session, base, "eventfold_cache_misses_total") - miss0
                total = hits + misses
                out["cache_hit_ratio"] = round(hits / total, 4) if total else None
        out["api_peak_rss_mib"] = max(r["processes"]["api"]["peak_rss_mib"] for r in out["runs"])
    finally:
        _stop(api)
    return out


def _brief(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    lag = run["dispatch_lag_ms"]["p99"]
    return (f"{run['achieved_rps']:,} req/s ok, {run['failures']} failed, p50 {lat['p50']} ms,"
            f" p99 {lat['p99']} ms, generator lag p99 {lag} ms")  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Seed, then measure cached and uncached single-record reads and list queries."""
    run_id = uuid.uuid4().hex[:6]
    settings = private_settings(run_id, partitions=8)
    await ensure_topics(settings)
    tenant = f"bench_reads_{run_id}"
    print(f"seeding {args.records} records of ~700 bytes…", flush=True)
    await _seed(settings, tenant, args.records)
    cached = await _phase(settings, tenant, args, cached=True)
    uncached = await _phase(settings, tenant, args, cached=False)
    lists = await _phase(settings, tenant, args, cached=True, lists=True)
    return {"cached": cached, "uncached": uncached, "lists": lists}


def main() -> None:
    """Parse arguments, run, print and save the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=64, help="connections at saturation")
    p.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 2500, 5000],
        help="fixed offered rates (requests/s, open loop), comma-separated",
    )
    args = p.parse_args()
    prov = provenance.stamp()
    started = time.monotonic()
    result = asyncio.run(run(args))
    doc = {
        "benchmark": "reads",
        "provenance": prov,
        "load_generator": "benchmarks.suite.openloop (open loop from scheduled starts)",
        "args": vars(args),
        "seconds": round(time.monotonic() - started, 1),
        "results": result,
    }
    out = provenance.save(doc, "reads")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
