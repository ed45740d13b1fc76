"""``python -m benchmarks.notifier_idle``: what an idle notifier costs the machine.

A notifier polls for new history ten times a second, whether or not anything
happened; its cost grows with the tenants that have an active endpoint. This
starts ``eventfold process notifier`` on the configured database (the dev
stack's, with whatever endpoints it holds: the count is recorded), waits
``--warmup`` seconds, then reads for ``--seconds`` the notifier's own CPU and the
whole machine's busy CPU (PostgreSQL's share of the polling shows only there),
and the machine's before it starts as the baseline. Nothing else should run.

    .venv/bin/python -m benchmarks.notifier_idle --seconds 30

Writes ``benchmarks/results/<date>-notifier-idle.json`` with its commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import provenance
from benchmarks.suite.phases import EXE, free_port
from eventfold.settings import Settings

_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU-seconds the machine spent busy so far (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / _TICKS


def _process_cpu(pid: int) -> float:
    """CPU-seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _busy_over(seconds: float) -> float:
    before = _machine_busy()
    time.sleep(seconds)
    return (_machine_busy() - before) / seconds


async def _subscribed(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(DISTINCT tenant) FROM eventfold.webhooks"
            " WHERE deleted_at IS NULL AND disabled_at IS NULL"
        )
    finally:
        await conn.close()
    return int(count)


def measure(seconds: float, warmup: float) -> dict[str, Any]:
    """The machine's busy cores without a notifier, then the notifier's and the machine's."""
    settings = Settings.from_env()
    tenants = asyncio.run(_subscribed(settings))
    baseline = _busy_over(min(seconds, 10.0))
    env = {**os.environ, "EVENTFOLD_HTTP_PORT": str(free_port()), "EVENTFOLD_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([EXE, "process", "notifier"], env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise SystemExit(f"the notifier exited with {proc.returncode}")
        own, machine = _process_cpu(proc.pid), _machine_busy()
        time.sleep(seconds)
        own = (_process_cpu(proc.pid) - own) / seconds
        machine = (_machine_busy() - machine) / seconds
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return {
        "subscribed_tenants": tenants,
        "seconds": seconds,
        "notifier_cores": round(own, 4),
        "machine_busy_cores": round(machine, 4),
        "machine_busy_cores_without_notifier": round(baseline, 4),
        "added_by_notifier_cores": round(machine - baseline, 4),
    }


def main() -> None:
    """Measure, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    prov = provenance.stamp()
    result = measure(args.seconds, args.warmup)
    doc = {"benchmark": "notifier-idle", "provenance": prov, "notifier_idle": result}
    path = provenance.save(doc, "notifier-idle", args.results)
    print(result)
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
