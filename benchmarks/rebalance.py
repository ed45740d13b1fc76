"""The pause a rebalance causes: one of two projector processes killed (or stopped) under load.

Two ``eventfold process projector`` processes share a private topic's partitions
and one ``eventfold serve api ingest`` process takes the writes. An open-loop
writer sends ``--rate`` single-event writes per second (each ``POST …/events``
starts at its scheduled time, whatever the earlier ones are doing) for
``--seconds``; at ``--kill-at`` one projector is stopped, in two scenarios:

- **SIGKILL**: the member vanishes; as a static member of the group it keeps its
  partitions until its 10 s session times out, then the survivor takes them;
- **SIGTERM**: a clean stop; the member leaves the group at once.

Each write's **write→visible** time runs from its scheduled start until the
projector's checkpoint of its partition (``eventfold.checkpoints``, committed in
the same transaction as the projection) passes its offset: the moment a read with
its consistency token would answer. A poller reads the checkpoints every 10 ms;
that is also the resolution. Reported per scenario, in seconds relative to the
kill: per-second p50/p99 of write→visible (by scheduled start), the baseline
(p50/p99 before the kill), the **pause** (the longest write→visible of a write
scheduled after the kill), the time until every later second's p99 is back within
2x the baseline p99, and failed writes (anything but 202, counted, never retried;
``answers`` counts each status, 0 for no answer).

Figures only, no assertion; they go to
``benchmarks/results/<date>-rebalance[-LABEL].json``::

    .venv/bin/python -m benchmarks.rebalance [--rate 200 --seconds 40 --kill-at 15] [--label x]

Run it with ``EVENTFOLD_HOME`` naming the stack's home (its services); each
scenario gets topics and consumer groups of its own, each process a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import signal
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
from benchmarks.restart import Run
from benchmarks.throughput import _free_port, percentile
from devstack import ensure_topics
from eventfold.settings import Settings

#: How often the checkpoints are read (the resolution of write→visible).
POLL_SECONDS = 0.01


@dataclass(slots=True)
class Write:
    """One write of the open-loop writer."""

    scheduled: float
    status: int = 0
    partition: int = -1
    offset: int = -1
    visible: float | None = None


class Checkpoints:
    """The projector's committed position per partition, read every :data:`POLL_SECONDS`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"{settings.consumer_group_prefix}.projector"
        #: Writes acknowledged and not visible yet, by partition.
        self.waiting: dict[int, list[Write]] = {}

    def watch(self, write: Write) -> None:
        """Mark ``write`` visible once the checkpoint of its partition passes it."""
        self.waiting.setdefault(write.partition, []).append(write)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` and nothing is waiting any more."""
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            while not (stop.is_set() and not any(self.waiting.values())):
                rows = await conn.fetch(
                    "SELECT partition, next_offset FROM eventfold.checkpoints"
                    " WHERE consumer = $1 AND topic = $2",
                    self.group,
                    self.settings.events_topic,
                )
                now = time.monotonic()
                for row in rows:
                    pending = self.waiting.get(row["partition"], [])
                    still = []
                    for write in pending:
                        if write.offset < row["next_offset"]:
                            write.visible = now
                        else:
                            still.append(write)
                    self.waiting[row["partition"]] = still
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await conn.close()


async def write_one(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int, write: Write,
    checkpoints: Checkpoints,
) -> None:  # fmt: skip
    """Wait for ``write``'s scheduled start, send it, and watch for it once acknowledged."""
    await asyncio.sleep(max(0.0, write.scheduled - time.monotonic()))
    event = {
        "specversion": "1.0",
        "id": f"rb-{n}",
        "source": "bench/rebalance",
        "type": "record.upserted",
        "subject": f"things/r{n % 5000}",
        "data": {"n": n},
    }
    try:
        async with http.post(url, data=orjson.dumps(event), headers=headers) as resp:
            write.status = resp.status
            if resp.status != 202:
                return
            placed = (await resp.json())["events"][0]
    except (aiohttp.ClientError, TimeoutError):
        write.status = 0
        return
    write.partition, write.offset = placed["partition"], placed["offset"]
    checkpoints.watch(write)


def figures(writes: list[Write], killed: float, kill_at: float) -> dict[str, Any]:
    """Per-second percentiles around the kill, the baseline, the pause and the recovery."""
    seconds: dict[int, list[float]] = {}
    failed: dict[int, int] = {}
    for w in writes:
        second = int((w.scheduled - killed) // 1)
        if w.visible is None:
            failed[second] = failed.get(second, 0) + 1
        else:
            seconds.setdefault(second, []).append(w.visible - w.scheduled)
    per_second = [
        {
            "t": t,
            "writes": len(seconds.get(t, [])) + failed.get(t, 0),
            "failed": failed.get(t, 0),
            "p50_ms": round(percentile(seconds[t], 0.5) * 1000, 1) if t in seconds else None,
            "p99_ms": round(percentile(seconds[t], 0.99) * 1000, 1) if t in seconds else None,
        }
        for t in sorted(set(seconds) | set(failed))
    ]
    # The baseline leaves out the first seconds (connections, caches warming up).
    before = [v for t, vs in seconds.items() if -kill_at + 3 <= t < 0 for v in vs]
    after = [w.visible - w.scheduled for w in writes if w.scheduled >= killed and w.visible]
    base_p99 = percentile(before, 0.99)
    # Back to normal: the first second after the kill from which every later one's p99
    # is within 2x the baseline p99.
    recovered: int | None = None
    for row in reversed([r for r in per_second if r["t"] >= 0]):
        if row["p99_ms"] is None or row["p99_ms"] > 2 * base_p99 * 1000 or row["failed"]:
            break
        recovered = int(row["t"])
    return {
        "baseline_p50_ms": round(percentile(before, 0.5) * 1000, 1),
        "baseline_p99_ms": round(base_p99 * 1000, 1),
        "pause_s": round(max(after, default=0.0), 2),
        "back_within_2x_p99_after_s": recovered,
        "writes": len(writes),
        "failed": sum(failed.values()),
        "per_second": per_second,
    }


async def scenario(sig: signal.Signals, rate: float, seconds: float, kill_at: float,
                   partitions: int) -> dict[str, Any]:  # fmt: skip
    """One run: two projectors, one HTTP process, the writer, ``sig`` to one projector."""
    run_id = uuid.uuid4().hex[:8]
    settings = private_settings(run_id, partitions=partitions, jwt_secret=secrets.token_hex(32))
    await ensure_topics(settings)
    home = Path(tempfile.mkdtemp(prefix="eventfold-rebalance-"))
    procs: list[Run] = []
    for n, command in enumerate(
        [("process", "projector"), ("process", "projector"), ("serve", "api", "ingest")]
    ):
        (home / str(n)).mkdir()
        procs.append(Run(settings, home / str(n), _free_port(), command))
    victim, gateway = procs[1], procs[2]
    tenant = f"rebalance{run_id}"
    connector = aiohttp.TCPConnector(limit=0)  # open loop: no client-side queue
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for proc in procs:
                proc.spawn()
            for proc in procs:
                await proc.ready(http, time.monotonic() + 120)
            # Limits far above the load: a 429 would be counted as a failed write.
            limits = {"requests_per_second": 100 * rate, "burst": int(100 * rate)}
            token = await gateway.create_tenant(http, tenant, "rebalance benchmark", limits=limits)
            async with http.get(f"{gateway.base}/v1/tenants/{tenant}", headers=gateway.headers(
                "*", "platform-admin", **{"X-Consistency-Token": token})) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()

            checkpoints = Checkpoints(settings)
            stop = asyncio.Event()
            poller = asyncio.create_task(checkpoints.run(stop))
            url = f"{gateway.base}/v1/tenants/{tenant}/events"
            headers = gateway.headers(tenant, "writer", **{"Content-Type": "application/json"})
            start = time.monotonic() + 0.5
            writes = [Write(start + i / rate) for i in range(int(rate * seconds))]
            tasks = [asyncio.create_task(write_one(http, url, headers, n, w, checkpoints))
                     for n, w in enumerate(writes)]  # fmt: skip
            killed = start + kill_at
            await asyncio.sleep(killed - time.monotonic())
            assert victim.proc is not None
            victim.proc.send_signal(sig)
            await asyncio.gather(*tasks)
            stop.set()
            await asyncio.wait_for(poller, 120)
        finally:
            for proc in procs:
                proc.stop()
    shutil.rmtree(home, ignore_errors=True)
    answers = Counter(str(w.status) for w in writes)
    result = {"signal": sig.name, **figures(writes, killed, kill_at), "answers": dict(answers)}
    summary = {k: v for k, v in result.items() if k != "per_second"}
    print(f"{sig.name}: {summary}", flush=True)
    return result


async def main(rate: float, seconds: float, kill_at: float, partitions: int) -> dict[str, Any]:
    """Both scenarios, SIGKILL first; the figures."""
    runs = [
        await scenario(sig, rate, seconds, kill_at, partitions)
        for sig in (signal.SIGKILL, signal.SIGTERM)
    ]
    return {
        "rebalance": {
            "rate_per_s": rate,
            "seconds": seconds,
            "kill_at_s": kill_at,
            "partitions": partitions,
            "process": "2 x eventfold process projector, 1 x eventfold serve api ingest",
            # The processes get the environment's settings: a killed member keeps its
            # partitions for this long (EVENTFOLD_KAFKA_SESSION_TIMEOUT_SECONDS).
            "session_timeout_s": Settings.from_env().kafka_session_timeout_seconds,
            "scenarios": runs,
        }
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=200.0, help="writes per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the load")
    parser.add_argument("--kill-at", type=float, default=15.0, help="seconds into the load")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    prov = provenance.stamp()
    figures_ = asyncio.run(main(args.rate, args.seconds, args.kill_at, args.partitions))
    out = provenance.save(
        {"provenance": prov, "args": vars(args), **figures_},
        f"rebalance{'-' + args.label if args.label else ''}",
    )
    print(f"written to {out}")
