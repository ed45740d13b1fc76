"""``python -m benchmarks.suite.webhooks [--quick|--smoke]``: webhook delivery throughput.

The suite's webhook phase, also runnable alone. On a private topic and a
private database (:mod:`benchmarks.privatedb`: a notifier delivers every
endpoint of its database, so on the shared one other people's notifiers would
take part), the ingest gateway, the projector and the read API run as their own
processes; a receiver in this process answers every signed POST. Three
scenarios, each on tenants of its own:

- **one endpoint**: one tenant, one endpoint, ``webhook_events`` record upserts
  over 100 records;
- **50 endpoints**: 50 tenants with one endpoint each, the same number of events
  spread over them;
- **one slow endpoint**: as the 50, but one endpoint answers after 1 s.

In each, the endpoints are subscribed (and projected), the events written and
projected while no notifier runs, then ``eventfold process notifier`` starts and
drains that backlog: deliveries/s is counted from the first delivery received
to the last (the notifier's start-up left out). Counted, never left out:
deliveries not received by the end (``undelivered``), attempts that failed
(``failed_attempts``, from the notifier's own attempt log), the same event
received twice (``duplicates``) and a record's events received out of order
(``out_of_order``). In the slow scenario the healthy endpoints' rate is
compared with the 50-endpoint run's (``healthy_vs_all_healthy``): a slow
endpoint should not slow the others. CPU per delivery (from the first
delivery on) and peak RSS (MiB) of the notifier are reported.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from benchmarks.privatedb import private_database
from benchmarks.suite import phases
from benchmarks.suite.procstat import ProcWatch
from eventfold.auth import issue_token

#: Records each tenant's events go to (a record's events are delivered in order).
RECORDS = 100
#: The slow endpoint's answer time, seconds.
SLOW_SECONDS = 1.0


@dataclass(slots=True)
class Receiver:
    """Local endpoints ``/hook/{n}``: first arrival per (endpoint, event id), order per record."""

    slow: set[int] = field(default_factory=set)
    #: Endpoints handed out so far (the next one is ``/hook/{endpoints}``).
    endpoints: int = 0
    first: dict[tuple[int, str], float] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order: int = 0
    _last_n: dict[tuple[int, str], int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    base: str = ""

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port)."""
        app = web.Application()
        app.router.add_post("/hook/{n}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook/"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        body = await request.read()
        if n in self.slow:
            await asyncio.sleep(SLOW_SECONDS)
        key = (n, request.headers.get("webhook-id", ""))
        if key in self.first:
            self.duplicates += 1
        else:
            self.first[key] = time.perf_counter()
            ev = orjson.loads(body)
            line = (n, str(ev.get("subject")))
            seq = int((ev.get("data") or {}).get("n", -1))
            if seq <= self._last_n.get(line, -1):
                self.out_of_order += 1
            self._last_n[line] = seq
        return web.Response(status=200)

    def arrivals(self, endpoints: set[int]) -> list[float]:
        """Times of the first arrivals at ``endpoints``, sorted."""
        return sorted(t for (n, _), t in self.first.items() if n in endpoints)


def _rate(times: list[float]) -> float | None:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]), 1)


async def _subscribe(
    bench: phases.Bench, session: aiohttp.ClientSession, tenant: str, url: str
) -> None:
    token = issue_token(bench.settings.jwt_secret, tenant=tenant, roles=["admin"], ttl_seconds=7200)
    async with session.post(
        f"{bench.url('ingest')}/v1/tenants/{tenant}/webhooks",
        json={"url": url, "types": ["record.*"]},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        if r.status != 202:
            raise SystemExit(f"webhook subscription failed: {r.status} {await r.text()}")


async def _wait_for(check: Any, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"benchmark setup: {what} not seen within {limit:.0f} s")


async def _write(
    bench: phases.Bench, session: aiohttp.ClientSession, tenants: list[str], events: int
) -> int:
    """``events`` record upserts spread over ``tenants`` (``{"n": i}`` rising per record)."""
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    prefix = uuid.uuid4().hex[:6]
    for i in range(events):
        tenant = tenants[i % len(tenants)]
        k = len(per[tenant])
        per[tenant].append({"specversion": "1.0", "id": f"wh-{prefix}-{i}", "source": "bench/wh",
                            "type": "record.upserted", "subject": f"things/r{k % RECORDS}",
                            "data": {"n": k}})  # fmt: skip
    # A tenant's requests go one after another (round by round): two in flight at once
    # reach the log in either order, and the receiver checks the order of ``n``.
    rounds = [[(t, orjson.dumps(evs[j : j + 500]), len(evs[j : j + 500]))
               for t, evs in per.items() if j < len(evs)]
              for j in range(0, max(len(evs) for evs in per.values()), 500)]  # fmt: skip
    written = 0
    for bodies in rounds:
        post = phases.Poster(bench, session, bodies)
        loop = await phases.closed_loop(len(bodies), 8, post, "webhook events")
        if loop.failures:
            raise SystemExit(f"writing the webhook events failed: {dict(loop.failures)}")
        written += post.events_ok
    return written


async def _attempt_log(bench: phases.Bench, tenants: list[str]) -> dict[str, int]:
    pool = await bench.pool()
    try:
        row = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE a.status_code IS NULL OR a.status_code >= 300)"
            "   AS failed,"
            " (SELECT count(*) FROM eventfold.webhook_deliveries d"
            "   WHERE d.tenant = ANY($1::text[]) AND d.state <> 'delivered') AS open"
            " FROM eventfold.webhook_attempts a JOIN eventfold.webhooks w ON w.id = a.webhook_id"
            " WHERE w.tenant = ANY($1::text[])",
            tenants,
        )
    finally:
        await pool.close()
    return {"failed_attempts": int(row["failed"]), "not_delivered_in_db": int(row["open"])}


async def scenario(
    bench: phases.Bench,
    session: aiohttp.ClientSession,
    receiver: Receiver,
    name: str,
    tenants: list[str],
    events: int,
    *,
    slow: int | None = None,
) -> dict[str, Any]:
    """Subscribe one endpoint per tenant, write and project ``events``, drain with a notifier."""
    first = receiver.endpoints
    receiver.endpoints += len(tenants)
    endpoints = {t: first + k for k, t in enumerate(tenants)}
    duplicates, out_of_order = receiver.duplicates, receiver.out_of_order
    if slow is not None:
        receiver.slow.add(endpoints[tenants[slow]])
    for tenant, n in endpoints.items():
        await _subscribe(bench, session, tenant, f"{receiver.base}{n}")
    pool = await bench.pool()
    try:

        async def subscribed() -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM eventfold.webhooks WHERE tenant = ANY($1::text[])", tenants
            )
            return bool(count == len(tenants))

        await _wait_for(subscribed, "the endpoints projected")
        written = await _write(bench, session, tenants, events)
        target = await bench.topic_size()

        async def projected() -> bool:
            return await bench.projected_offsets(pool) >= target

        await _wait_for(projected, "the events projected", limit=300)
    finally:
        await pool.close()

    ids = set(endpoints.values())
    healthy = ids - receiver.slow
    await bench.start("notifier", "process", "notifier", http=False)
    started = time.perf_counter()
    deadline = started + 30 + written / 20
    # CPU is counted from the first delivery on: the notifier's start-up is not delivery work.
    while time.perf_counter() < deadline and not receiver.arrivals(ids):
        bench.running("notifier")
        await asyncio.sleep(0.01)  # a measurement loop: the receiver's count, polled
    watch = ProcWatch({"notifier": bench.procs["notifier"].pid}, interval=0.5)
    watch.start()
    before = len(receiver.arrivals(ids))
    while time.perf_counter() < deadline and len(receiver.arrivals(ids)) < written:
        bench.running("notifier")
        await asyncio.sleep(0.1)
    ended = time.perf_counter()
    got = receiver.arrivals(ids)
    processes = await watch.stop(max(len(got) - before, 1))
    bench.stop("notifier")
    log = await _attempt_log(bench, tenants)
    out: dict[str, Any] = {
        "endpoints": len(ids), "tenants": len(tenants), "events": written,
        "expected": written, "delivered": len(got),
        "deliveries_per_second": _rate(got),
        "seconds_first_to_last": round(got[-1] - got[0], 2) if got else None,
        "seconds_from_notifier_start": round(ended - started, 2),
        "undelivered": written - len(got), **log,
        "duplicates": receiver.duplicates - duplicates,
        "out_of_order": receiver.out_of_order - out_of_order,
        "processes": processes,
    }  # fmt: skip
    out["failures"] = out["undelivered"] + out["failed_attempts"] + out["out_of_order"]
    if slow is not None:
        fast = receiver.arrivals(healthy)
        late = receiver.arrivals(receiver.slow & ids)
        out["healthy"] = {"endpoints": len(healthy), "delivered": len(fast),
                          "deliveries_per_second": _rate(fast)}  # fmt: skip
        out["slow"] = {"endpoints": 1, "answer_seconds": SLOW_SECONDS, "delivered": len(late),
                       "expected": sum(1 for i in range(written) if i % len(tenants) == slow),
                       "deliveries_per_second": _rate(late)}  # fmt: skip
    print(f"  {name}: {len(got):,}/{written:,} delivered, {out['deliveries_per_second']}/s,"
          f" {out['failures']} failures", file=sys.stderr)  # fmt: skip
    return out


async def run(sizes: phases.Sizes) -> dict[str, Any]:
    """The three scenarios; their results."""
    bench = await phases.Bench.create(tenants=101, partitions=8)
    one, fifty, slowed = bench.tenants[:1], bench.tenants[1:51], bench.tenants[51:101]
    receiver = Receiver()
    await receiver.start()
    try:
        database = private_database(bench.settings.database_url, bench.run_id, bench.tenants)
        async with database as dsn:
            bench.settings = replace(bench.settings, database_url=dsn)
            bench.extra_env = {"EVENTFOLD_DATABASE_URL": dsn,
                               "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}  # fmt: skip
            try:
                await bench.start("ingest", "serve", "ingest")
                conn = aiohttp.TCPConnector(limit=64)
                async with aiohttp.ClientSession(connector=conn) as session:
                    await phases.start_pipeline(bench, session)
                    out = {
                        "one_endpoint": await scenario(
                            bench, session, receiver, "one endpoint", one, sizes.webhook_events
                        ),
                        "fifty_endpoints": await scenario(
                            bench, session, receiver, "50 endpoints", fifty, sizes.webhook_events
                        ),
                        "slow_endpoint": await scenario(
                            bench, session, receiver, "one slow endpoint", slowed,
                            sizes.webhook_events, slow=0,
                        ),
                    }  # fmt: skip
                    for name in ("ingest", "projector", "api"):
                        out.setdefault("serving_peak_rss_mib", {})[name] = phases.rss_peak(
                            bench.procs[name].pid
                        )
            finally:
                bench.stop_all()
    finally:
        await receiver.stop()
    healthy = out["slow_endpoint"]["healthy"]["deliveries_per_second"]
    reference = out["fifty_endpoints"]["deliveries_per_second"]
    out["slow_endpoint"]["healthy_vs_all_healthy"] = (
        round(healthy / reference, 2) if healthy and reference else None
    )
    out["database"] = "private (created for the phase, dropped after)"
    return out


def main() -> None:
    """Run the phase alone; print its figures and write ``results/<date>-webhooks.json``."""
    result, path = phases.run_alone("webhooks", "webhooks", __doc__, run)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
