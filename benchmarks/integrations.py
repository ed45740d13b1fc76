"""Integration sync: items/s from a fast local source, and upstream change → readable record.

Runs the whole app in this process (ingest, API, projector, sync runner) on a
private topic, and a third party on 127.0.0.1 serving ``--items`` items in
pages of ``--page-size`` from memory. Measures:

1. **initial sync**: from ``POST …/integrations`` until the runner has
   published every item (acks=all, cursor stored) and until every record is
   readable through the API;
2. **change latency**: ``--changes`` times, one item changes upstream, then
   ``POST …/sync``; the time until ``GET …/records/{id}`` shows the change.

Runs on a database of its own (created and dropped). Writes
``benchmarks/results/<date>-integrations.json`` with its commit; the suite runs
:func:`measure` as its integrations phase. Nothing here asserts a time.

    .venv/bin/python -m benchmarks.integrations --items 20000 --page-size 500
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from benchmarks import provenance
from benchmarks.private import private_settings
from benchmarks.privatedb import private_database
from devstack import ensure_topics
from entrypoints.bootstrap import create_app
from eventfold.auth import issue_token
from eventfold.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FastSource:
    """A change feed in memory: cursor = offset."""

    def __init__(self, items: int, page_size: int) -> None:
        self.entries = [{"id": f"i{i:07d}", "n": i, "v": 0} for i in range(items)]
        self.page_size = page_size

    async def handle(self, request: web.Request) -> web.Response:
        start = int(request.query.get("cursor", "0"))
        end = start + self.page_size
        body = {
            "items": self.entries[start:end],
            "next_cursor": str(end) if end < len(self.entries) else None,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _wait(check: Any, limit: float = 600.0, every: float = 0.01) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise TimeoutError("the benchmark's condition was not met")


async def measure(
    items: int, page_size: int = 500, partitions: int = 4, changes: int = 30
) -> dict[str, Any]:
    """Both measurements on a private database (see :mod:`benchmarks.privatedb`: the sync
    runner polls every integration of its database, other people's tests' included)."""
    args = argparse.Namespace(items=items, page_size=page_size, partitions=partitions,
                              changes=changes)  # fmt: skip
    run_id = uuid.uuid4().hex[:6]
    shared = Settings.from_env().database_url
    async with private_database(shared, run_id, [f"bench{run_id}"]) as dsn:
        result = await run(args, run_id, dsn)
    return {"items": items, "page_size": page_size, "database": "private", **result}


async def run(args: argparse.Namespace, run_id: str, database_url: str) -> dict[str, Any]:
    """Run both measurements on ``database_url``; return their figures."""
    settings = private_settings(
        run_id,
        database_url=database_url,
        partitions=args.partitions,
        webhook_allow_hosts=("127.0.0.1",),
        sync_tick_seconds=0.02,
        sync_max_pages_per_run=100_000,
        rate_limit_default_rps=1_000_000.0,
        rate_limit_default_burst=1_000_000,
    )
    await ensure_topics(settings)
    source = FastSource(args.items, args.page_size)
    src_app = web.Application()
    src_app.router.add_get("/items", source.handle)
    src_runner = web.AppRunner(src_app, access_log=None)
    await src_runner.setup()
    src_port = _free_port()
    await web.TCPSite(src_runner, "127.0.0.1", src_port).start()
    app_runner = web.AppRunner(create_app(settings), access_log=None)
    await app_runner.setup()
    port = _free_port()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    tenant = f"bench{run_id}"
    secret = settings.jwt_secret
    admin_jwt = issue_token(secret, tenant="*", roles=("platform-admin",), ttl_seconds=3600)
    admin = {"Authorization": f"Bearer {admin_jwt}"}
    tenant_jwt = issue_token(secret, tenant=tenant, roles=("admin",), ttl_seconds=3600)
    auth = {"Authorization": f"Bearer {tenant_jwt}"}
    result: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/tenants", json={"id": tenant, "name": tenant},
                                 headers=admin) as resp:  # fmt: skip
                token = (await resp.json())["consistency_token"]
            seen = {**admin, "X-Consistency-Token": token}
            async with http.get(f"{base}/v1/tenants/{tenant}", headers=seen) as resp:
                assert resp.status == 200
            t0 = time.perf_counter()
            body = {"kind": "http-poll", "url": f"http://127.0.0.1:{src_port}/items",
                    "collection": "items", "interval_seconds": 3600}  # fmt: skip
            async with http.post(f"{base}/v1/tenants/{tenant}/integrations", json=body,
                                 headers=auth) as resp:  # fmt: skip
                iid = (await resp.json())["id"]
            one = f"{base}/v1/tenants/{tenant}/integrations/{iid}"

            async def published() -> bool:
                async with http.get(one, headers=auth) as r:
                    return r.status == 200 and (await r.json())["items_synced"] >= args.items

            await _wait(published, every=0.05)
            t_published = time.perf_counter() - t0
            last = f"{base}/v1/tenants/{tenant}/collections/items/records/i{args.items - 1:07d}"

            async def count_readable() -> bool:
                # Cheap until the last item is there, then every record is counted.
                async with http.get(last, headers=auth) as r:
                    if r.status != 200:
                        return False
                count, after = 0, ""
                while True:
                    q = f"?limit=1000&after={after}" if after else "?limit=1000"
                    url = f"{base}/v1/tenants/{tenant}/collections/items/records{q}"
                    async with http.get(url, headers=auth) as r:
                        page = await r.json()
                    count += len(page["items"])
                    if not page["next"]:
                        return count >= args.items
                    after = page["next"]

            await _wait(count_readable, every=0.05)
            t_readable = time.perf_counter() - t0
            result["initial_sync"] = {
                "items": args.items,
                "page_size": args.page_size,
                "published_seconds": round(t_published, 3),
                "published_items_per_second": round(args.items / t_published),
                "readable_seconds": round(t_readable, 3),
                "readable_items_per_second": round(args.items / t_readable),
            }
            latencies: list[float] = []
            for k in range(1, args.changes + 1):
                i = (k * 7919) % args.items
                source.entries.append({"id": f"i{i:07d}", "n": i, "v": k})
                rec = f"{base}/v1/tenants/{tenant}/collections/items/records/i{i:07d}"
                start = time.perf_counter()
                async with http.post(one + "/sync", headers=auth) as r:
                    assert r.status == 202

                async def changed(rec: str = rec, k: int = k) -> bool:
                    async with http.get(rec, headers=auth) as r:
                        return r.status == 200 and (await r.json())["data"]["v"] == k

                await _wait(changed, limit=60)
                latencies.append(time.perf_counter() - start)
            latencies.sort()
            result["change_to_readable_ms"] = {
                "samples": len(latencies),
                "p50": round(statistics.median(latencies) * 1000, 1),
                "p95": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
                "max": round(latencies[-1] * 1000, 1),
            }
    finally:
        await app_runner.cleanup()
        await src_runner.cleanup()
    return result


def main() -> None:
    """Parse arguments, run, print and save the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--changes", type=int, default=30)
    args = p.parse_args()
    prov = provenance.stamp()
    result = asyncio.run(measure(args.items, args.page_size, args.partitions, args.changes))
    doc = {"benchmark": "integrations", "provenance": prov, "args": vars(args),
           "integrations": result}  # fmt: skip
    out = provenance.save(doc, "integrations")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"saved {out}")


if __name__ == "__main__":
    main()
