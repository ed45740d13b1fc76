"""Workflow runs: runs/s of a 3-step workflow at saturation, trigger → first step latency.

The workflow: an ``http`` step to a receiver on 127.0.0.1 (answers ``{"id"}``),
a ``record`` patch writing that id back, an ``email`` to an SMTP server on
127.0.0.1 (aiosmtpd). ``eventfold run`` (every part in one process) runs as a
subprocess on a private database and topic; this process writes the triggers
and plays both third parties. Measures:

1. **saturation**: ``runs`` triggers written at once (batches of 500 record
   events); runs/s from the first write until every run has finished;
2. **latency at half of it**: triggers at half that rate (one ``PUT`` each, open
   loop) for ``seconds``; per run, from its trigger's scheduled start to its first
   step starting (the step's ``started_at``), p50 / p99.

Both count their ``failures``: triggers the gateway did not accept and runs that
ended failed or cancelled (a target whose row has failures is not met). Results
go to ``benchmarks/results/<date>-workflows.json`` with their provenance; the
suite runs :func:`measure` as its ``workflows`` phase (``python -m
benchmarks.suite --smoke --only workflows``). Nothing here asserts a time.

    .venv/bin/python -m benchmarks.workflows --runs 5000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from benchmarks import provenance
from benchmarks.private import private_settings
from benchmarks.privatedb import PrivateDatabaseRefused, private_database
from benchmarks.suite.phases import EXE, SMOKE, free_port, wait_ready
from benchmarks.suite.procstat import cpu_seconds, machine_busy_seconds
from devstack import ensure_topics
from entrypoints.registry import PROCESSORS
from eventfold.auth import issue_token
from eventfold.settings import Settings


class _Mails:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 OK"


def _env(settings: Settings, port: int, smtp_port: int, per_tenant: int) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_DATABASE_URL": settings.database_url,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "EVENTFOLD_JWT_SECRET": settings.jwt_secret,
        "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "EVENTFOLD_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "EVENTFOLD_RATE_LIMIT_DEFAULT_RPS": "1000000",
        "EVENTFOLD_RATE_LIMIT_DEFAULT_BURST": "1000000",
        "EVENTFOLD_LOG_LEVEL": "WARNING",
        # One tenant here: its cap of runs in flight would bound the rate, not the engine.
        "EVENTFOLD_WORKFLOW_PER_TENANT": str(per_tenant),
    }


def _cpu(commands: list[list[str]], procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """CPU-seconds used so far by each Eventfold process (by its command) and by this one."""
    out = {" ".join(c): cpu_seconds(p.pid) for c, p in zip(commands, procs, strict=True)}
    out["load generator and third parties"] = sum(os.times()[:2])
    # The rest of the machine's busy time is PostgreSQL's, Kafka's and the S3 server's.
    out["whole machine"] = machine_busy_seconds()
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


async def _finished(pool: asyncpg.Pool, tenant: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok,"
        " count(*) FILTER (WHERE status IN ('failed', 'cancelled')) AS failed"
        " FROM eventfold.workflow_runs WHERE tenant = $1",
        tenant,
    )
    assert row is not None
    return int(row["ok"]), int(row["failed"])


async def _wait_finished(
    pool: asyncpg.Pool, tenant: str, total: int, limit: float, mails: _Mails
) -> float:
    """When ``total`` runs of ``tenant`` have ended (``perf_counter``).

    Every run ends with its email step, so the SMTP server's count says when the end
    is near: until it has a mail for every run not failed, PostgreSQL is asked once a
    second (for runs that failed, which send none); from then on every 50 ms. Asking
    every 50 ms throughout, as before, cost PostgreSQL ~4 ms a count
    (pg_stat_statements): about 5 % of the machine during saturation, taken from the
    system measured.
    """
    deadline = time.monotonic() + limit
    failed = 0
    looked_at = -1.0
    while time.monotonic() < deadline:
        near = mails.count + failed >= total
        if near or time.monotonic() - looked_at >= 1.0:
            looked_at = time.monotonic()
            ok, failed = await _finished(pool, tenant)
            if ok + failed >= total:
                return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"runs did not finish within {limit} s")


async def _wait_projected(pool: asyncpg.Pool, tenant: str, total: int, limit: float) -> float:
    """Until the tenant's ``runs`` table (the projection of the run events) has ``total``
    finished runs: every event the runs wrote is folded."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = await pool.fetchval(
            f'SELECT count(*) FROM "t_{tenant}".runs WHERE finished_at IS NOT NULL'
        )
        if done >= total:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"runs were not projected within {limit} s")


async def _first_step_latencies(
    pool: asyncpg.Pool, tenant: str, scheduled: dict[str, float]
) -> tuple[list[float], list[float]]:
    """Per run whose trigger record is a key of ``scheduled`` (its trigger's scheduled
    start, epoch seconds): scheduled start → first step, and scheduled start → its run
    created by the workflow processor (the part spent on the way through the gateway,
    Kafka and the projector's batch; the rest is the processor's). Open loop: a trigger
    the gateway was slow to take counts that wait too."""
    rows = await pool.fetch(
        "SELECT state->'context'->'record'->>'id' AS record,"
        " (state->'progress'->0->>'started_at')::float AS first,"
        " extract(epoch FROM created_at)::float AS created"
        " FROM eventfold.workflow_runs WHERE tenant = $1"
        " AND state->'context'->'record'->>'id' = ANY($2::text[])",
        tenant,
        list(scheduled),
    )
    first, created = [], []
    for r in rows:
        if r["first"] is not None:
            at = scheduled[r["record"]]
            first.append(max(0.0, r["first"] - at))
            created.append(max(0.0, r["created"] - at))
    return first, created


def _ms(sample: list[float]) -> dict[str, Any]:
    """p50 / p99 / max of ``sample`` (seconds) in milliseconds."""
    return {
        "samples": len(sample),
        "p50": round(statistics.median(sample) * 1000, 1) if sample else None,
        "p99": round(_percentile(sample, 0.99) * 1000, 1) if sample else None,
        "max": round(max(sample) * 1000, 1) if sample else None,
    }


async def run(args: argparse.Namespace, run_id: str, database_url: str) -> dict[str, Any]:
    """Both measurements against an ``eventfold run`` on ``database_url``."""
    settings = private_settings(run_id, database_url=database_url, partitions=args.partitions)
    await ensure_topics(settings)
    receiver = web.Application()

    async def crm(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": request.headers.get("Idempotency-Key", "")[-12:]})

    receiver.router.add_post("/crm", crm)
    rx = web.AppRunner(receiver, access_log=None)
    await rx.setup()
    rx_port = free_port()
    await web.TCPSite(rx, "127.0.0.1", rx_port).start()
    mails = _Mails()
    smtp_port = free_port()
    smtp = Controller(mails, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # "one": every part in one `eventfold run`; "split": the HTTP parts in one process
    # and each stream processor in one of its own, as a deployment on several cores.
    commands = [["run", "--no-token"]] if args.layout == "one" else [
        ["serve", "api", "ingest"], *(["process", name] for name in sorted(PROCESSORS))
    ]  # fmt: skip
    ports = [port, *(free_port() for _ in commands[1:])]
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurements
            [EXE, *command],
            env=_env(settings, at, smtp_port, args.per_tenant),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command, at in zip(commands, ports, strict=True)
    ]
    tenant = f"wfbench{run_id}"
    secret = settings.jwt_secret
    admin = {
        "Authorization": "Bearer " + issue_token(secret, tenant="*", roles=("platform-admin",))
    }
    auth = {"Authorization": "Bearer " + issue_token(secret, tenant=tenant, roles=("admin",))}
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    result: dict[str, Any] = {}
    try:
        for proc, at in zip(procs, ports, strict=True):
            await wait_ready(f"http://127.0.0.1:{at}", proc)
        async with aiohttp.ClientSession() as http:
            # Limits far above the load, as the suite's tenants (a tenant running hundreds
            # of runs a second would have them raised; the default is 100 requests/s).
            limits = {"requests_per_second": 1_000_000, "burst": 1_000_000}
            body = {"id": tenant, "name": tenant, "limits": limits}
            async with http.post(f"{base}/v1/tenants", json=body, headers=admin) as r:
                token = (await r.json())["consistency_token"]
            async with http.get(f"{base}/v1/tenants/{tenant}",
                                headers={**admin, "X-Consistency-Token": token}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
            definition = {
                "id": "bench", "trigger": {"types": ["record.upserted"], "collection": "orders"},
                "steps": [
                    {"id": "crm", "kind": "http", "url": f"http://127.0.0.1:{rx_port}/crm",
                     "body": {"order": "${/record/id}"}},
                    {"id": "mark", "kind": "record", "op": "patch", "collection": "orders",
                     "record": "${/record/id}", "data": {"crm": {"$from": "/steps/crm/output/id"}}},
                    {"id": "mail", "kind": "email", "to": ["ops@example.com"],
                     "subject": "order ${/record/id}", "text": "paid"},
                ],
            }  # fmt: skip
            t = f"{base}/v1/tenants/{tenant}"
            async with http.post(f"{t}/workflows", json=definition, headers=auth) as r:
                assert r.status == 202, await r.text()
                token = (await r.json())["consistency_token"]
            async with http.get(f"{t}/workflows/bench",
                                headers={**auth, "X-Consistency-Token": token}) as r:  # fmt: skip
                assert r.status == 200, await r.text()

            # 1. saturation: every trigger at once, in batches; a batch the gateway does
            # not accept is counted (its runs never start), the rest go on.
            cpu_before = _cpu(commands, procs)
            started = time.perf_counter()
            refused = 0
            for first in range(0, args.runs, 500):
                batch = [
                    {"specversion": "1.0", "id": f"s{i}", "source": "bench",
                     "type": "record.upserted", "subject": f"orders/s{i}", "data": {"n": i}}
                    for i in range(first, min(args.runs, first + 500))
                ]  # fmt: skip
                try:
                    async with http.post(f"{t}/events", data=orjson.dumps(batch), headers={
                            **auth, "Content-Type": "application/json"}) as r:  # fmt: skip
                        await r.read()
                        refused += len(batch) if r.status != 202 else 0
                except aiohttp.ClientError:
                    refused += len(batch)
            started_runs = args.runs - refused
            done = await _wait_finished(pool, tenant, started_runs, 600, mails)
            _ok, failed = await _finished(pool, tenant)
            projected = await _wait_projected(pool, tenant, started_runs, limit=600)
            cpu_after = _cpu(commands, procs)
            seconds = done - started
            rate = started_runs / seconds
            result["saturation"] = {
                "runs": args.runs, "seconds": round(seconds, 3),
                "runs_per_second": round(rate, 1), "failed": failed,
                "write_errors": refused, "failures": failed + refused,
                "mails": mails.count,
                # Until every run event is folded into the read model too.
                "projected_seconds": round(projected - started, 3),
                "projected_runs_per_second": round(started_runs / (projected - started), 1),
                # CPU-seconds of each process from the first write until every run is
                # projected (PostgreSQL and Kafka take the rest of the two cores).
                "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before},
            }  # fmt: skip

            # 2. latency at half the saturation rate: one PUT per trigger, open loop.
            target = max(1.0, rate / 2)
            count = max(1, int(target * args.seconds))
            loop_started, wall_started = time.perf_counter(), time.time()
            errors = 0
            reasons: Counter[str] = Counter()

            async def one(i: int) -> None:
                nonlocal errors
                at = loop_started + i / target
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                try:
                    async with http.put(f"{t}/collections/orders/records/l{i}", json={"i": i},
                                        headers=auth) as r:  # fmt: skip
                        if r.status != 202:
                            errors += 1
                            problem = (await r.text())[:120]
                            reasons[f"HTTP {r.status}: {problem}"] += 1
                except aiohttp.ClientError as exc:
                    errors += 1
                    reasons[type(exc).__name__] += 1

            await asyncio.gather(*(one(i) for i in range(count)))
            await _wait_finished(pool, tenant, started_runs + count - errors, 600, mails)
            _ok2, failed2 = await _finished(pool, tenant)
            # Only the latency phase's runs (their triggers are the l* records).
            sample, created = await _first_step_latencies(
                pool, tenant, {f"l{i}": wall_started + i / target for i in range(count)}
            )
            result["latency_at_half"] = {
                "rate_per_second": round(target, 1), "seconds": args.seconds, "runs": count,
                "write_errors": errors, "write_error_reasons": dict(reasons.most_common(5)),
                "failed": failed2 - failed,
                "failures": errors + failed2 - failed,
                "trigger_to_first_step_ms": _ms(sample),
                "trigger_to_run_created_ms": _ms(created),
            }  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        await pool.close()
        smtp.stop()
        await rx.cleanup()
    return result


async def measure(
    runs: int,
    seconds: float = 10.0,
    partitions: int = 4,
    per_tenant: int = 256,
    layout: str = "one",
) -> dict[str, Any]:
    """Both measurements, on a private database when one can be made, else on the
    shared one: a workflows processor serves only the inbox and runs of its own topic,
    and this run's topic is its own, so other people's processors never touch them."""
    args = argparse.Namespace(
        runs=runs, seconds=seconds, partitions=partitions, per_tenant=per_tenant, layout=layout
    )
    run_id = uuid.uuid4().hex[:6]
    shared = Settings.from_env().database_url
    try:
        async with private_database(shared, run_id, [f"wfbench{run_id}"]) as dsn:
            result = await run(args, run_id, dsn)
        database = "private"
    except PrivateDatabaseRefused:
        result = await run(args, run_id, shared)
        database = "shared (a topic of its own)"
    return {"runs": runs, "latency_seconds": seconds, "database": database,
            "workflow_per_tenant": per_tenant,
            "process": LAYOUTS[layout], **result}  # fmt: skip


#: What each ``--layout`` runs, as the result file names it.
LAYOUTS = {
    "one": "eventfold run (one process)",
    "split": "eventfold serve api ingest, and eventfold process <name> for each processor",
}


def main() -> None:
    """Parse arguments, run, print and save the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5000, help="triggers of the saturation phase")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency phase")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--per-tenant",
        type=int,
        default=256,
        help="EVENTFOLD_WORKFLOW_PER_TENANT of the run (one tenant is measured)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code itself")
    p.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default="one",
        help="one: eventfold run; split: the HTTP parts and each processor in its own process",
    )
    args = p.parse_args()
    doc: dict[str, Any] = {"benchmark": "workflows"}
    if args.smoke:
        # The suite's smoke sizes; marked so, the file is never quoted in BENCHMARKS.md.
        args.runs, args.seconds = SMOKE.workflow_runs, SMOKE.fixed_seconds
        doc["sizes"] = SMOKE.name
    doc["provenance"] = provenance.stamp()
    result = asyncio.run(
        measure(args.runs, args.seconds, args.partitions, args.per_tenant, args.layout)
    )
    doc.update(args=vars(args), workflows=result)
    out = provenance.save(doc, "workflows-smoke" if args.smoke else "workflows")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
