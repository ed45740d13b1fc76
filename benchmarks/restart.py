"""Restart after kill -9: how long until ready, and until a write made then is readable.

``eventfold run`` (everything in one process) on a private topic and consumer
groups is killed with SIGKILL and started again, ``--rounds`` times. Each round
measures, from the moment the new process is spawned:

- **ready**: until ``/health/ready`` first answers ``ok``;
- **visible**: from that moment until a record written right then reads back
  with its consistency token (200); each read waits at most 5 s and a 503 is
  retried, the 503s are counted.

Figures only, no assertion; they go to ``benchmarks/results/<date>-restart[-LABEL].json``::

    .venv/bin/python -m benchmarks.restart --rounds 5 [--label before]

Run it with ``EVENTFOLD_HOME`` naming the stack's home (its services and secrets);
the spawned processes get a temporary home of their own (their ``var/``: faust's
data dir and dev secrets), a JWT secret made for the run, and a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import provenance
from benchmarks.private import private_settings
from devstack import ensure_topics
from eventfold.auth import issue_token
from eventfold.settings import Settings

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """One ``eventfold run`` process at a time (or ``eventfold COMMAND...``), on the
    benchmark's topic and port."""

    def __init__(
        self, settings: Settings, home: Path, port: int, command: tuple[str, ...] = ("run",)
    ) -> None:
        self.settings = settings
        self.command = command
        self.base = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "EVENTFOLD_HOME": str(home),
            "EVENTFOLD_JWT_SECRET": settings.jwt_secret,
            "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
            "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
            "EVENTFOLD_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "EVENTFOLD_HTTP_PORT": str(port),
            "EVENTFOLD_LOG_LEVEL": "WARNING",
        }
        self.log = open(home / f"{'-'.join(command)}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start ``eventfold run`` (or the command)."""
        self.proc = subprocess.Popen(
            [EVENTFOLD, *self.command], env=self.env, stdout=self.log, stderr=self.log
        )

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM the process (a clean stop) and close the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def headers(self, tenant: str, *roles: str, **extra: str) -> dict[str, str]:
        token = issue_token(self.settings.jwt_secret, tenant=tenant, roles=roles, ttl_seconds=3600)
        return {"Authorization": f"Bearer {token}", **extra}

    async def create_tenant(
        self, http: aiohttp.ClientSession, tenant: str, name: str, **body: Any
    ) -> str:
        """Create ``tenant`` (``body``: more fields, e.g. ``limits``) as the platform admin;
        the answer's consistency token."""
        async with http.post(
            f"{self.base}/v1/tenants",
            data=orjson.dumps({"id": tenant, "name": name, **body}),
            headers=self.headers("*", "platform-admin"),
        ) as resp:
            assert resp.status == 202, await resp.text()
            token: str = (await resp.json())["consistency_token"]
            return token

    async def ready(self, http: aiohttp.ClientSession, deadline: float) -> float:
        """Poll ``/health/ready`` every 20 ms; the monotonic time it first said ok."""
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, f"eventfold {' '.join(self.command)} exited"
            try:
                async with http.get(f"{self.base}/health/ready") as resp:
                    if resp.status == 200 and (await resp.json())["status"] == "ok":
                        return time.monotonic()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        raise TimeoutError("not ready in time")

    async def write_and_read(
        self, http: aiohttp.ClientSession, tenant: str, n: int
    ) -> tuple[float, int]:
        """Write a record, read it back with its token; (monotonic time of the 200, 503s)."""
        path = f"{self.base}/v1/tenants/{tenant}/collections/c/records/r{n}"
        async with http.put(path, data=orjson.dumps({"n": n}), headers=self.headers(
            tenant, "writer", **{"Content-Type": "application/json"}
        )) as resp:  # fmt: skip
            assert resp.status == 202, await resp.text()
            token = (await resp.json())["consistency_token"]
        unavailable = 0
        while True:
            async with http.get(
                path, headers=self.headers(tenant, "reader", **{"X-Consistency-Token": token})
            ) as resp:
                if resp.status == 200:
                    return time.monotonic(), unavailable
                assert resp.status == 503, await resp.text()
                unavailable += 1


async def main(rounds: int, partitions: int) -> dict[str, Any]:
    """Start, kill -9 and restart ``eventfold run`` ``rounds`` times; the figures."""
    run_id = uuid.uuid4().hex[:8]
    settings = private_settings(run_id, partitions=partitions, jwt_secret=secrets.token_hex(32))
    await ensure_topics(settings)
    home = Path(tempfile.mkdtemp(prefix="eventfold-restart-"))
    run = Run(settings, home, _free_port())
    tenant = f"restart{run_id}"
    results: list[dict[str, float | int]] = []
    async with aiohttp.ClientSession() as http:
        try:
            run.spawn()
            await run.ready(http, time.monotonic() + 120)
            await run.create_tenant(http, tenant, "restart benchmark")
            await asyncio.sleep(2)  # projected: the first write below must not be a 403
            await run.write_and_read(http, tenant, 0)
            for i in range(1, rounds + 1):
                await asyncio.sleep(3)  # settled: every processor consuming
                run.kill()
                spawned = time.monotonic()
                run.spawn()
                ready = await run.ready(http, spawned + 120)
                visible, unavailable = await run.write_and_read(http, tenant, i)
                row = {
                    "ready_s": round(ready - spawned, 2),
                    "visible_after_ready_s": round(visible - ready, 2),
                    "reads_503": unavailable,
                }
                results.append(row)
                print(f"round {i}: {row}", flush=True)
        finally:
            run.stop()
    shutil.rmtree(home, ignore_errors=True)  # kept (with its run.log) when a round failed
    summary = {
        key: {
            "median": round(statistics.median(float(r[key]) for r in results), 2),
            "max": max(r[key] for r in results),
        }
        for key in ("ready_s", "visible_after_ready_s", "reads_503")
    }
    print(f"summary over {rounds} rounds: {summary}")
    return {"rounds": results, "summary": summary, "partitions": partitions}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    prov = provenance.stamp()
    figures = asyncio.run(main(args.rounds, args.partitions))
    out = provenance.save(
        {"provenance": prov, **figures}, f"restart{'-' + args.label if args.label else ''}"
    )
    print(f"written to {out}")
