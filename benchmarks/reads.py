"""Read latency and throughput of one API process: single records cached and uncached, lists.

Seeds one tenant with records through a real ``eventfold serve ingest``
process and the projector, then starts a real ``eventfold serve api`` process
and loads it with ``wrk`` (Debian's wrk 4.1; ``apt-get install -y wrk``) and a
Lua script that sets the bearer token and picks each request's path:

- **cached**: ``GET …/records/{id}`` (uniformly random ids), the cache warmed
  first (every record read once), so reads are answered by Redis;
- **uncached**: the same with the API process restarted with
  ``EVENTFOLD_CACHE_ENABLED=false``, so every read goes to PostgreSQL under the
  tenant's role;
- **lists**: ``GET …/records?…`` list queries (always PostgreSQL), a random
  one of :data:`LIST_QUERIES` per request: the first page in id and in
  ``-updated_at`` order, later pages (cursors taken from the API first), a
  filter on a common value and one on a rare value.

Each is run at fixed rates (each wrk connection paced with ``delay()``) and at
saturation (no pacing). wrk is closed-loop: when the server falls behind a fixed
rate, the achieved rate drops instead of the latency growing (coordinated
omission), so compare the achieved rate with the target. The cache hit ratio
comes from the API process's own ``/metrics``. Results go to stdout and to
``benchmarks/results/<date>-reads.json``.

    .venv/bin/python -m benchmarks.reads
    .venv/bin/python -m benchmarks.reads --records 20000 --seconds 20 --rates 1000,5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from benchmarks.private import private_settings
from benchmarks.throughput import _free_port, _project, _wait_ready, make_event
from eventfold.auth import issue_token
from eventfold.infra import ensure_topics
from eventfold.settings import Settings

RESULTS = Path(__file__).parent / "results"
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

#: wrk's script: the token, a random record id per request, an optional pacing delay,
#: and a JSON summary (latencies in microseconds) on the last line.
WRK_SCRIPT = """
local token, prefix, records, pace = os.getenv("BENCH_TOKEN"), os.getenv("BENCH_PREFIX"),
  tonumber(os.getenv("BENCH_RECORDS")), tonumber(os.getenv("BENCH_DELAY_MS"))
local paths = {}
for path in string.gmatch(os.getenv("BENCH_PATHS") or "", "[^ ]+") do paths[#paths + 1] = path end
wrk.headers["Authorization"] = "Bearer " .. token
request = function()
  if #paths > 0 then return wrk.format("GET", paths[math.random(1, #paths)]) end
  return wrk.format("GET", prefix .. "o" .. math.random(0, records - 1))
end
if pace > 0 then
  delay = function() return pace end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"errors":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


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
            await _project(settings, "tenant")  # the gateway accepts events of known tenants
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
    await _project(settings, "seed")


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


def _wrk(
    base: str, prefix: str, token: str, records: int, *, rate: int | None, seconds: int,
    connections: int, script: Path, paths: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    pace = 0 if rate is None else max(1, round(1000 * connections / rate))
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_PREFIX": prefix,
           "BENCH_RECORDS": str(records), "BENCH_DELAY_MS": str(pace),
           "BENCH_PATHS": " ".join(paths or ())}  # fmt: skip
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(script), base],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    summary = orjson.loads(out.strip().splitlines()[-1])
    secs = summary["duration_us"] / 1e6
    return {
        "target_rps": rate,
        "connections": connections,
        "achieved_rps": round(summary["requests"] / secs, 1),
        "requests": summary["requests"],
        "non_2xx": summary["non_2xx"],
        "socket_errors": summary["errors"],
        "latency_ms": {
            k: round(summary[k] / 1000, 3) for k in ("p50", "p90", "p99", "p999", "max")
        },
    }


async def _phase(
    settings: Settings,
    tenant: str,
    args: argparse.Namespace,
    *,
    cached: bool,
    script: Path,
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
            for rate in [*args.rates, None]:
                conns = args.connections if rate is None else min(args.connections, rate // 50)
                run = await asyncio.to_thread(
                    _wrk, base, prefix, token, args.records, rate=rate, seconds=args.seconds,
                    connections=max(conns, 4), script=script, paths=paths,
                )  # fmt: skip
                print(f"  {label} @ {rate or 'saturation'}: {run}", flush=True)
                out["runs"].append(run)
            if not lists:
                hits = await _metric(session, base, "eventfold_cache_hits_total") - hits0
                misses = await _metric(session, base, "eventfold_cache_misses_total") - miss0
                total = hits + misses
                out["cache_hit_ratio"] = round(hits / total, 4) if total else None
    finally:
        _stop(api)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Seed, then measure cached and uncached single-record reads and list queries."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    run_id = uuid.uuid4().hex[:6]
    settings = private_settings(run_id, partitions=8)
    await ensure_topics(settings)
    tenant = f"bench_reads_{run_id}"
    print(f"seeding {args.records} records of ~700 bytes…", flush=True)
    await _seed(settings, tenant, args.records)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "get.lua"
        script.write_text(WRK_SCRIPT)
        cached = await _phase(settings, tenant, args, cached=True, script=script)
        uncached = await _phase(settings, tenant, args, cached=False, script=script)
        lists = await _phase(settings, tenant, args, cached=True, script=script, lists=True)
    return {"cached": cached, "uncached": uncached, "lists": lists}


def main() -> None:
    """Parse arguments, run, print and save the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64, help="wrk connections at saturation")
    p.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 2500, 5000],
        help="fixed target rates (requests/s), comma-separated",
    )
    args = p.parse_args()
    started = time.monotonic()
    result = asyncio.run(run(args))
    doc = {
        "benchmark": "reads",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_generator": subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
        "args": vars(args),
        "seconds": round(time.monotonic() - started, 1),
        "results": result,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-reads.json"
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
