"""A tenant moved between database servers under load: what its handover costs everyone.

Needs a stack with a second database server: ``EVENTFOLD_DATABASE_SERVERS=
b=postgresql://eventfold:eventfold@127.0.0.1:5433/eventfold .venv/bin/eventfold
infra up`` (the same variable set for this command). One ``eventfold process
projector`` (an instance per server) and one ``eventfold serve api ingest`` run on
a private topic. Three tenants: the one moved (``--records`` records written before
the load, in batches) and a bystander on each server. An open-loop writer sends
``--rate`` writes per second spread over the three for ``--seconds``; at
``--move-at`` ``eventfold tenants move`` takes the first tenant to the other server.

Each write counts from its scheduled start until a read of its record with the
write's consistency token answers 200 with the value written (the API's routing and
its wait included): write→readable. Failed writes and reads (anything else, or no
answer) are counted, never retried. Reported per tenant: p50/p99/max of
write→readable for writes scheduled before the move, during it (from the command's
start to its end, its grace period included) and after; the move's own figures (rows
copied, handover: how long both servers' projectors waited, total seconds).

Figures only, no assertion; they go to
``benchmarks/results/<date>-tenant-move[-LABEL].json``::

    .venv/bin/python -m benchmarks.tenant_move [--records 20000 --rate 90 --seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks import provenance
from benchmarks.private import private_settings
from benchmarks.restart import EVENTFOLD, Run
from benchmarks.throughput import _free_port, percentile
from devstack import ensure_topics
from eventfold.settings import Settings


@dataclass(slots=True)
class Write:
    """One write of the open-loop writer, and the read that finds it."""

    tenant: str
    scheduled: float
    status: int = 0
    readable: float | None = None


async def write_then_read(http: aiohttp.ClientSession, gateway: Run, write: Write, n: int) -> None:
    """At its scheduled start, write a record; read it back with the write's token."""
    await asyncio.sleep(max(0.0, write.scheduled - time.monotonic()))
    path = f"{gateway.base}/v1/tenants/{write.tenant}/collections/things/records/w{n}"
    headers = gateway.headers(write.tenant, "writer", **{"Content-Type": "application/json"})
    try:
        async with http.put(path, data=orjson.dumps({"n": n}), headers=headers) as resp:
            write.status = resp.status
            if resp.status != 202:
                return
            token = (await resp.json())["consistency_token"]
        read = gateway.headers(write.tenant, "reader", **{"X-Consistency-Token": token})
        async with http.get(path, headers=read) as resp:
            if resp.status != 200 or (await resp.json())["data"] != {"n": n}:
                write.status = 1000 + resp.status  # written, not readable as written
                return
    except (aiohttp.ClientError, TimeoutError):
        write.status = 0
        return
    write.readable = time.monotonic()


def phase(writes: list[Write]) -> dict[str, Any]:
    """Percentiles of write→readable (ms) and the failures of ``writes``."""
    ok = [w.readable - w.scheduled for w in writes if w.readable is not None]
    return {
        "writes": len(writes),
        "failed": len(writes) - len(ok),
        # Each answer (1000 + a read's status: written, not read back as written; 0: none).
        "answers": dict(Counter(str(w.status if w.readable is None else 200) for w in writes)),
        "p50_ms": round(percentile(ok, 0.5) * 1000, 1) if ok else None,
        "p99_ms": round(percentile(ok, 0.99) * 1000, 1) if ok else None,
        "max_ms": round(max(ok) * 1000, 1) if ok else None,
    }


async def seed(http: aiohttp.ClientSession, gateway: Run, tenant: str, records: int) -> str:
    """``records`` records in batches of 1,000; the last batch's consistency token."""
    url = f"{gateway.base}/v1/tenants/{tenant}/events"
    headers = gateway.headers(tenant, "writer", **{"Content-Type": "application/json"})
    token = ""
    for start in range(0, records, 1000):
        batch = [
            {
                "specversion": "1.0",
                "id": f"seed-{n}",
                "source": "bench/tenant-move",
                "type": "record.upserted",
                "subject": f"seeded/s{n}",
                "data": {"n": n, "pad": "x" * 200},
            }
            for n in range(start, min(records, start + 1000))
        ]
        async with http.post(url, data=orjson.dumps(batch), headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            token = (await resp.json())["consistency_token"]
    return token


async def move(settings: Settings, tenant: str, target: str) -> dict[str, Any]:
    """Run ``eventfold tenants move``; its JSON report."""
    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        EVENTFOLD, "tenants", "move", tenant, "--to", target, "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = json.loads(out)
    return doc


async def main(records: int, rate: float, seconds: float, move_at: float) -> dict[str, Any]:
    """One run; the figures."""
    run_id = uuid.uuid4().hex[:8]
    settings = private_settings(run_id, partitions=4, jwt_secret=secrets.token_hex(32))
    if len(settings.server_urls) < 2:
        raise SystemExit("set EVENTFOLD_DATABASE_SERVERS (a second server) first")
    await ensure_topics(settings)
    home = Path(tempfile.mkdtemp(prefix="eventfold-move-"))
    procs: list[Run] = []
    for n, command in enumerate([("process", "projector"), ("serve", "api", "ingest")]):
        (home / str(n)).mkdir()
        procs.append(Run(settings, home / str(n), _free_port(), command))
    gateway = procs[1]
    limits = {"requests_per_second": 100 * rate, "burst": int(100 * rate)}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            for proc in procs:
                proc.spawn()
            for proc in procs:
                await proc.ready(http, time.monotonic() + 120)
            # The moved tenant on the second server, a bystander on each: placed before
            # they are created (the directory keeps an entry made before).
            tenants = [f"move{run_id}{n}" for n in range(3)]
            servers = list(settings.server_urls)
            where = dict(zip(tenants, [servers[1], servers[0], servers[1]], strict=True))
            conn = await asyncpg.connect(settings.database_url)
            try:
                await conn.executemany(
                    "INSERT INTO eventfold.tenant_placement (tenant, server) VALUES ($1, $2)",
                    list(where.items()),
                )
            finally:
                await conn.close()
            for tenant in tenants:
                token = await gateway.create_tenant(http, tenant, "move benchmark", limits=limits)
                await _visible(http, gateway, tenant, token)
            moved = tenants[0]
            await _visible(http, gateway, moved, await seed(http, gateway, moved, records))
            writes = [
                Write(tenants[i % 3], time.monotonic() + 1.0 + i / rate)
                for i in range(int(rate * seconds))
            ]
            tasks = [
                asyncio.create_task(write_then_read(http, gateway, w, n))
                for n, w in enumerate(writes)
            ]
            await asyncio.sleep(max(0.0, writes[0].scheduled + move_at - time.monotonic()))
            placement = await _placement(settings, tenants)
            target = next(s for s in settings.server_urls if s != placement[moved])
            began = time.monotonic()
            report = await move(settings, moved, target)
            ended = time.monotonic()
            await asyncio.gather(*tasks)
        finally:
            for proc in procs:
                proc.stop()
    shutil.rmtree(home, ignore_errors=True)
    by_tenant = {}
    for tenant in tenants:
        mine = [w for w in writes if w.tenant == tenant]
        by_tenant[tenant] = {
            "role": "moved" if tenant == moved else f"bystander on {placement[tenant]}",
            "before": phase([w for w in mine if w.scheduled < began]),
            "during": phase([w for w in mine if began <= w.scheduled < ended]),
            "after": phase([w for w in mine if w.scheduled >= ended]),
        }
    result = {
        "records": records,
        "rate_per_s": rate,
        "seconds": seconds,
        "move_at_s": move_at,
        "move": report,
        "move_wall_s": round(ended - began, 3),
        "tenants": by_tenant,
        "process": "1 x eventfold process projector (an instance per server),"
        " 1 x eventfold serve api ingest, the mover's CLI",
    }
    print(json.dumps({k: v for k, v in result.items()}, indent=1), flush=True)
    return {"tenant_move": result}


async def _visible(http: aiohttp.ClientSession, gateway: Run, tenant: str, token: str) -> None:
    """Wait until a read with ``token`` of ``tenant`` answers (the projection has it)."""
    headers = gateway.headers("*", "platform-admin", **{"X-Consistency-Token": token})
    for _ in range(20):
        async with http.get(f"{gateway.base}/v1/tenants/{tenant}", headers=headers) as resp:
            if resp.status == 200:
                return
    raise AssertionError(f"tenant {tenant} not projected")


async def _placement(settings: Settings, tenants: list[str]) -> dict[str, str]:
    args = [a for t in tenants for a in ("--tenant", t)]
    proc = await asyncio.create_subprocess_exec(
        EVENTFOLD, "tenants", "placement", *args, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    found: dict[str, str] = json.loads(out)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20_000, help="the moved tenant's")
    parser.add_argument("--rate", type=float, default=90.0, help="writes per second, all tenants")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load")
    parser.add_argument("--move-at", type=float, default=10.0, help="seconds into the load")
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    prov = provenance.stamp()
    figures = asyncio.run(main(args.records, args.rate, args.seconds, args.move_at))
    out = provenance.save(
        {"provenance": prov, "args": vars(args), **figures},
        f"tenant-move{'-' + args.label if args.label else ''}",
    )
    print(f"written to {out}")
