"""Notifications on this machine: webhook deliveries/s and latency, SSE fan-out latency.

One app in this process on the local stack (a private topic) runs the API,
ingest, the projector and the notifier; a local aiohttp receiver (on
127.0.0.1, allowed for the run) answers 200 to every webhook. Measures

- webhooks: ``--events`` record upserts (``--in-flight`` requests at once, over
  100 records) to a tenant with one endpoint; deliveries/s from the first write
  to the last delivery, and event-to-delivery latency (write request sent →
  the signed POST received) p50/p99;
- SSE: ``--clients`` streams of one tenant (``types=record.*``) on a second,
  API-only app (streams fan out through Redis pub/sub), then ``--sse-events``
  writes, one every 100 ms; latency from the write request to each client's
  frame, p50/p99 over all (client, event) pairs.

    .venv/bin/python -m benchmarks.notifications [--events 2000] [--clients 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from benchmarks import provenance
from benchmarks.private import private_settings
from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from eventfold.auth import issue_token
from eventfold.settings import Settings


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _receiver(arrivals: dict[str, float]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        arrivals.setdefault(request.headers["webhook-id"], time.perf_counter())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def _tenant(client: TestClient[Any, Any], settings: Settings) -> tuple[str, dict[str, str]]:
    tenant = f"b{uuid.uuid4().hex[:10]}"
    admin = {
        "Authorization": "Bearer "
        + issue_token(settings.jwt_secret, tenant="*", roles=("platform-admin",), ttl_seconds=3600)
    }
    limits = {"requests_per_second": 1_000_000, "burst": 1_000_000}
    r = await client.post(
        "/v1/tenants", json={"id": tenant, "name": "b", "limits": limits}, headers=admin
    )
    token = (await r.json())["consistency_token"]
    await client.get(f"/v1/tenants/{tenant}", headers={**admin, "X-Consistency-Token": token})
    auth = {
        "Authorization": "Bearer "
        + issue_token(
            settings.jwt_secret,
            tenant=tenant,
            roles=("admin", "writer", "reader"),
            ttl_seconds=3600,
        )
    }
    return tenant, auth


async def webhooks(client: TestClient[Any, Any], settings: Settings, args: Any) -> dict[str, Any]:
    """Deliveries/s and event-to-delivery latency to one local endpoint."""
    arrivals: dict[str, float] = {}
    runner, url = await _receiver(arrivals)
    try:
        tenant, auth = await _tenant(client, settings)
        r = await client.post(
            f"/v1/tenants/{tenant}/webhooks", headers=auth, json={"url": url, "types": ["record.*"]}
        )
        made = await r.json()
        await client.get(
            f"/v1/tenants/{tenant}/webhooks",
            headers={**auth, "X-Consistency-Token": made["consistency_token"]},
        )
        sent: dict[str, float] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.events):
            queue.put_nowait(i)

        async def writer() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                started = time.perf_counter()
                r = await client.put(
                    f"/v1/tenants/{tenant}/collections/things/records/r{i % 100}",
                    json={"i": i},
                    headers=auth,
                )
                sent[(await r.json())["event_id"]] = started

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(args.in_flight)))
        written = time.perf_counter() - start
        async with asyncio.timeout(600):
            while len(arrivals) < args.events:  # noqa: ASYNC110 - a measurement loop
                await asyncio.sleep(0.05)
        elapsed = max(arrivals.values()) - start
        latency = [arrivals[e] - t for e, t in sent.items()]
        return {
            "what": "webhook deliveries to a local receiver",
            "events": args.events,
            "writes_per_s": round(args.events / written, 1),
            "deliveries_per_s": round(args.events / elapsed, 1),
            "latency_ms_p50": _pct(latency, 0.5),
            "latency_ms_p99": _pct(latency, 0.99),
        }
    finally:
        await runner.cleanup()


async def sse(
    client: TestClient[Any, Any], streams: TestClient[Any, Any], settings: Settings, args: Any
) -> dict[str, Any]:
    """Write-to-frame latency with ``--clients`` connected streams of one tenant."""
    tenant, auth = await _tenant(client, settings)
    arrivals: list[dict[str, float]] = [{} for _ in range(args.clients)]
    connected = 0
    attempted: list[int] = []
    ok: list[int] = []
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    )
    base = str(streams.make_url(f"/v1/tenants/{tenant}/stream?types=record.*"))
    ready = asyncio.Event()

    async def listen(n: int) -> None:
        nonlocal connected
        async with session.get(base, headers={**auth, "Accept": "text/event-stream"}) as resp:
            attempted.append(resp.status)
            if len(attempted) == args.clients:
                ready.set()
            if resp.status != 200:
                return
            connected += 1
            ok.append(n)
            if connected == args.clients:
                ready.set()
            async for raw in resp.content:
                line = raw.decode()
                if line.startswith("data: "):
                    arrivals[n].setdefault(json.loads(line[6:])["id"], time.perf_counter())

    tasks = [asyncio.create_task(listen(n)) for n in range(args.clients)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 120)
        clients = connected
        await asyncio.sleep(1.0)  # every stream subscribed and past its ": live"
        sent: dict[str, float] = {}
        for i in range(args.sse_events):
            started = time.perf_counter()
            r = await client.put(
                f"/v1/tenants/{tenant}/collections/things/records/s{i}", json={"i": i}, headers=auth
            )
            sent[(await r.json())["event_id"]] = started
            await asyncio.sleep(0.1)
        deadline = time.perf_counter() + 60
        live = [arrivals[n] for n in ok]

        def missing() -> bool:
            return any(len(a) < len(sent) for a in live)

        while time.perf_counter() < deadline and missing():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        latency = [a[e] - t for a in live for e, t in sent.items() if e in a]
        return {
            "what": "SSE write-to-frame latency",
            "clients_connected": clients,
            "events": len(sent),
            "frames_received": len(latency),
            "frames_expected": clients * len(sent),
            "latency_ms_p50": _pct(latency, 0.5) if latency else None,
            "latency_ms_p99": _pct(latency, 0.99) if latency else None,
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


async def main(args: argparse.Namespace) -> None:
    """Run the measurements asked for; write them with the commit they ran on."""
    prov = provenance.stamp()
    run = uuid.uuid4().hex[:8]
    settings = private_settings(
        run,
        partitions=4,
        webhook_allow_hosts=("127.0.0.1",),
        webhook_retry_schedule=(1, 1, 1),
        stream_queue_max=10_000,
        stream_max_per_tenant=0,  # --clients streams of one tenant: no cap
    )
    await ensure_topics(settings)
    a: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(processors=("projector", "notifier"))))
    )
    b: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(api=True, ingest=False, processors=())))
    )
    await a.start_server()
    await b.start_server()
    results: list[dict[str, Any]] = []
    try:
        if args.events:
            results.append(await webhooks(a, settings, args))
            print(json.dumps(results[-1]))
        if args.clients:
            results.append(await sse(a, b, settings, args))
            print(json.dumps(results[-1]))
    finally:
        await b.close()
        await a.close()
    doc = {"benchmark": "notifications", "provenance": prov, "args": vars(args),
           "results": results}  # fmt: skip
    print(f"saved {provenance.save(doc, 'notifications')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sse-events", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
