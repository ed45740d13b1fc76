"""CPU time and memory of processes, read from /proc (Linux).

A benchmark reports CPU-seconds per 1,000 events for every process involved and
its peak memory; :class:`ProcWatch` samples RSS while a phase runs so a plot
can show memory over time (flat, or growing).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 when it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy (all cores, every process) so far."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MiB."""
    now = peak = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return now, peak


@dataclass(slots=True)
class ProcWatch:
    """CPU and memory of named processes over one phase."""

    pids: dict[str, int]
    interval: float = 1.0
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _cpu0: dict[str, float] = field(default_factory=dict)
    #: Last CPU and peak RSS seen per process: what remains once a process has exited.
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)
    _t0: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Remember CPU counters now and begin sampling RSS."""
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.samples = {name: [] for name in self.pids}
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                now, peak = rss_mib(pid)
                cpu = cpu_seconds(pid)
                if now:  # a zombie (exited, not yet reaped) has no memory lines
                    self.samples[name].append((time.monotonic() - self._t0, now))
                if cpu or peak:
                    previous = self._last.get(name, (0.0, 0.0))
                    self._last[name] = (max(cpu, previous[0]), max(peak, previous[1]))
            await asyncio.sleep(self.interval)

    async def stop(
        self, events: int, exited_cpu: dict[str, float] | None = None
    ) -> dict[str, dict[str, float]]:
        """Per process: CPU-seconds per 1,000 events, CPU-seconds, peak and last RSS.

        ``exited_cpu`` gives the exact CPU of processes that have exited (from
        ``RUSAGE_CHILDREN``); otherwise an exited process counts its last sample.
        """
        if self._task is not None:
            self._task.cancel()
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            now, peak = rss_mib(pid)
            live_cpu = cpu_seconds(pid)
            last_cpu, last_peak = self._last.get(name, (0.0, 0.0))
            if exited_cpu and name in exited_cpu:
                cpu = exited_cpu[name]
            else:
                cpu = (live_cpu or last_cpu) - self._cpu0.get(name, 0.0)
            peak = peak or last_peak
            out[name] = {
                "cpu_seconds": round(cpu, 2),
                "cpu_seconds_per_1000_events": round(1000 * cpu / max(events, 1), 4),
                "rss_mib": round(now, 1),
                "peak_rss_mib": round(peak, 1),
            }
        return out


def children_cpu() -> float:
    """CPU seconds of every reaped child process so far (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
