"""Credentials and rate limits on this machine: revocation reach, and per-request costs.

Runs two app instances in this process on the local stack (a private topic):
A serves everything (API, ingest, projector), B only the read API with its own
key cache, as a second API process would. Measures

- revocation reach: ``DELETE …/api-keys/{id}`` answered by A → first 401 for
  that key on B (no consistency token; B had the key cached), polled every 5 ms;
- the rate limit check (one Lua token bucket call to Redis), sequentially;
- checking a cached API key and an HS256 bearer token.

    .venv/bin/python -m benchmarks.credentials [--revocations 30] [--checks 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from benchmarks.private import private_settings
from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from eventfold.appkeys import API_KEYS, RATE_LIMITER, VERIFIER
from eventfold.auth import issue_token


def _summary(samples: list[float], unit: float, name: str) -> dict[str, Any]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * unit  # noqa: E731
    return {
        "what": name,
        "n": len(samples),
        "p50": round(pick(0.5), 2),
        "p95": round(pick(0.95), 2),
        "max": round(ordered[-1] * unit, 2),
        "mean": round(statistics.fmean(samples) * unit, 2),
    }


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:8]
    settings = private_settings(run, partitions=4)
    await ensure_topics(settings)
    a: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    b: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(api=True, ingest=False, processors=())))
    )
    await a.start_server()
    await b.start_server()
    try:
        admin = {"Authorization": "Bearer " + issue_token(
            settings.jwt_secret, tenant="*", roles=["platform-admin"])}  # fmt: skip
        tenant = f"bench_{run}"
        limits = {"requests_per_second": 1_000_000, "burst": 1_000_000}
        r = await a.post("/v1/tenants", json={"id": tenant, "name": "b", "limits": limits},
                         headers=admin)  # fmt: skip
        token = (await r.json())["consistency_token"]
        await a.get(f"/v1/tenants/{tenant}", headers={**admin, "X-Consistency-Token": token})
        path = f"/v1/tenants/{tenant}"
        reach: list[float] = []
        for _ in range(args.revocations):
            r = await a.post(f"{path}/api-keys", json={"name": "b", "roles": ["reader"]},
                             headers=admin)  # fmt: skip
            made = await r.json()
            key = {"X-API-Key": made["key"]}
            warm = await b.get(
                path, headers={**key, "X-Consistency-Token": made["consistency_token"]}
            )
            assert warm.status == 200, await warm.text()
            started = time.perf_counter()
            r = await a.delete(f"{path}/api-keys/{made['id']}", headers=admin)
            assert r.status == 202
            while (await b.get(path, headers=key)).status != 401:
                assert time.perf_counter() - started < 30, "never refused"
                await asyncio.sleep(0.005)
            reach.append(time.perf_counter() - started)

        limiter = a.app[RATE_LIMITER]
        checks: list[float] = []
        for _ in range(args.checks):
            t0 = time.perf_counter()
            await limiter.check(tenant, limits)
            checks.append(time.perf_counter() - t0)

        r = await a.post(f"{path}/api-keys", json={"name": "b", "roles": ["reader"]},
                         headers=admin)  # fmt: skip
        made = await r.json()
        await a.get(path, headers={"X-API-Key": made["key"],
                                   "X-Consistency-Token": made["consistency_token"]})  # fmt: skip
        directory = a.app[API_KEYS]
        keys: list[float] = []
        for _ in range(args.checks):
            t0 = time.perf_counter()
            await directory.authenticate(made["key"])
            keys.append(time.perf_counter() - t0)
        verifier = a.app[VERIFIER]
        jwt = issue_token(settings.jwt_secret, tenant=tenant, roles=["reader"])
        tokens: list[float] = []
        for _ in range(args.checks):
            t0 = time.perf_counter()
            verifier.verify(jwt)
            tokens.append(time.perf_counter() - t0)
        for line in (
            _summary(reach, 1000, "revocation reach to another instance (ms)"),
            _summary(checks, 1_000_000, "rate limit check, Redis Lua (µs)"),
            _summary(keys, 1_000_000, "API key check, cached (µs)"),
            _summary(tokens, 1_000_000, "HS256 token check (µs)"),
        ):
            print(line)
    finally:
        await b.close()
        await a.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--revocations", type=int, default=30)
    p.add_argument("--checks", type=int, default=5000)
    asyncio.run(main(p.parse_args()))
