"""Eventfold's phases: ingest, projection, end-to-end, reads, replay.

Every process under test runs as its own ``eventfold`` process (as in
production), so :class:`~.procstat.ProcWatch` can charge CPU and memory to it;
the load generator runs in this process. Latencies go into
:class:`~.histogram.Histogram`s; open-loop phases measure from each request's
*scheduled* start, so a server falling behind shows as latency (no
coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks.private import private_settings
from benchmarks.suite.histogram import Histogram
from benchmarks.suite.procstat import ProcWatch, children_cpu
from benchmarks.suite.progress import Progress
from benchmarks.suite.workload import Workload
from devstack import ensure_topics
from eventfold.auth import issue_token
from eventfold.settings import Settings

EXE = str(Path(sys.executable).with_name("eventfold"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much load each phase sends."""

    name: str
    batch_events: int
    #: Batch ingest at fixed arrival rates (events/s), ``batch_seconds`` each.
    batch_rates: tuple[int, ...]
    batch_seconds: float
    single_saturation: int
    fixed_rates: tuple[int, ...]
    fixed_seconds: float
    e2e_saturation_pairs: int
    e2e_seconds: float
    eventsourcing_events: int
    read_records: int
    read_seconds: float
    #: Events written per webhook scenario (each delivered once per matching endpoint).
    webhook_events: int
    #: Events through the analytics worker; items of the integration's initial sync.
    analytics_events: int
    integration_items: int
    #: Runs of the 3-step workflow triggered at once (saturation); the latency phase
    #: then runs ``fixed_seconds`` at half the rate reached.
    workflow_runs: int


#: In flight at once for single-event ingest at saturation; the eventsourcing peer
#: appends with as many writers, so the two are compared at the same concurrency.
SINGLE_CONCURRENCY = 64

#: ``make bench QUICK=1``: under 10 minutes on 2 cores. Every request sends new events
#: (a re-sent one would take the gateway's cheaper duplicate path).
QUICK = Sizes(
    "quick", 40_000, (5_000, 10_000), 2, 8_000, (500, 1000, 2000, 5000), 3, 3_000, 8, 5_000,
    5_000, 5, 5_000, 20_000, 10_000, 2_000,
)  # fmt: skip
FULL = Sizes(
    "full", 300_000, (10_000, 20_000), 10, 30_000, (1000, 2000, 5000), 15, 10_000, 20, 20_000,
    20_000, 15, 20_000, 50_000, 20_000, 10_000,
)  # fmt: skip
#: A run of a few minutes that exercises every code path (for changing the suite itself).
SMOKE = Sizes(
    "smoke", 5_000, (2_000,), 1, 500, (200,), 1, 200, 1, 300, 500, 1, 200, 1_000, 500, 200,
)  # fmt: skip

#: Phases a run may leave out (``--skip``) or pick (``--only``); ingest and projection
#: run whenever a picked phase builds on them (:data:`ON_THE_CORE`).
OPTIONAL_PHASES = ("peers", "visible", "reads", "replay", "webhooks", "analytics",
                   "integrations", "workflows", "tracing", "encryption")  # fmt: skip
#: Optional phases that read the topic and tables the core phases (tenants, ingest,
#: projection) fill; the others set up their own database and topic.
ON_THE_CORE = frozenset({"peers", "visible", "replay"})


@dataclass(frozen=True, slots=True)
class Cli:
    """A suite command line: the sizes, where results go, the phases left out."""

    sizes: Sizes
    results: Path
    skip: frozenset[str]
    #: The phases picked with ``--only`` (empty: every phase not skipped). Such a run
    #: is partial: its parts are quoted, but it is not "the newest suite run".
    only: frozenset[str] = frozenset()

    @property
    def core(self) -> bool:
        """Whether tenants, ingest and projection run: always, unless ``--only`` picked
        phases none of which builds on them."""
        return not self.only or bool(self.only & ON_THE_CORE)


def _phases(p: argparse.ArgumentParser, value: str) -> frozenset[str]:
    names = frozenset(x for x in value.split(",") if x)
    unknown = names - set(OPTIONAL_PHASES)
    if unknown:
        p.error(f"no such optional phase: {', '.join(sorted(unknown))}")
    return names


def cli(description: str | None, argv: list[str] | None = None, *, suite: bool = True) -> Cli:
    """``--quick`` / ``--smoke`` (else the full sizes), ``--results DIR``, and for the
    whole ``suite`` ``--skip a,b`` or ``--only a,b``."""
    from benchmarks.provenance import RESULTS

    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes: under 10 minutes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code itself")
    p.add_argument("--results", type=Path, default=RESULTS, help="where result files go")
    if suite:
        optional = ",".join(OPTIONAL_PHASES)
        picks = p.add_mutually_exclusive_group()
        picks.add_argument("--skip", default="", help=f"phases to leave out: {optional}")
        picks.add_argument(
            "--only", default="",
            help="only these optional phases (and ingest and projection if one of them"
            f" builds on them: {','.join(sorted(ON_THE_CORE))})",
        )  # fmt: skip
    args = p.parse_args(argv)
    skip = _phases(p, getattr(args, "skip", ""))
    only = _phases(p, getattr(args, "only", ""))
    if only:
        skip = frozenset(OPTIONAL_PHASES) - only
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    return Cli(sizes, args.results, skip, only)


def run_alone(
    name: str, key: str, description: str | None,
    run: Callable[[Sizes], Awaitable[dict[str, Any]]],
) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """One phase by itself (``python -m benchmarks.suite.<phase>``): its command line,
    the run, and its result saved under ``key`` with its provenance as
    ``<date>-<name>-<sizes>.json``; the result and the file."""
    from benchmarks import provenance

    args = cli(description, suite=False)
    prov = provenance.stamp()
    result = asyncio.run(run(args.sizes))
    doc = {"benchmark": name, "sizes": args.sizes.name, "provenance": prov, key: result}
    return result, provenance.save(doc, f"{name}-{args.sizes.name}", args.results)


def sizes_from_args(description: str | None) -> Sizes:
    """The sizes a command line asks for: ``--quick``, ``--smoke``, or the full ones."""
    return cli(description, suite=False).sizes


@dataclass(slots=True)
class Bench:
    """One suite run: its private topic and group, tenants, processes and tokens."""

    settings: Settings
    tenants: list[str]
    workload: Workload
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    published: int = 0
    #: Environment every process under test gets beside the run's topics (see :meth:`env`).
    extra_env: dict[str, str] = field(default_factory=dict)
    #: The random id naming the run's topics and groups.
    run_id: str = ""

    @classmethod
    async def create(cls, tenants: int, partitions: int) -> Bench:
        """Private topic/group names for this run; the topic is created."""
        run_id = uuid.uuid4().hex[:6]
        settings = private_settings(run_id, partitions=partitions)
        await ensure_topics(settings)
        names = [f"bench_{run_id}_{n:02d}" for n in range(tenants)]
        return cls(settings, names, Workload(names), run_id=run_id)

    def env(self, port: int | None = None, **extra: str) -> dict[str, str]:
        """The environment of a process under test."""
        env = {
            **os.environ,
            "EVENTFOLD_EVENTS_TOPIC": self.settings.events_topic,
            "EVENTFOLD_DLQ_TOPIC": self.settings.dlq_topic,
            "EVENTFOLD_CONSUMER_GROUP_PREFIX": self.settings.consumer_group_prefix,
            "EVENTFOLD_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "EVENTFOLD_LOG_LEVEL": "WARNING",
            **self.extra_env,
            **extra,
        }
        if port is not None:
            env["EVENTFOLD_HTTP_PORT"] = str(port)
        return env

    async def start(self, name: str, *argv: str, http: bool = True) -> None:
        """Start ``eventfold *argv`` as ``name``; with ``http``, wait until it is ready.

        Every process gets a free port of its own: stream processors serve health
        and metrics too, and two of them on the default port would collide (the
        second one exits).
        """
        port = free_port()
        self.procs[name] = subprocess.Popen(  # noqa: ASYNC220 - started between phases
            [EXE, *argv], env=self.env(port), stdout=subprocess.DEVNULL
        )
        self.ports[name] = port
        if http:
            await wait_ready(f"http://127.0.0.1:{port}", self.procs[name])

    def running(self, name: str) -> None:
        """Raise if process ``name`` has exited: a phase waiting on its work would wait in vain."""
        code = self.procs[name].poll()
        if code is not None:
            raise RuntimeError(f"eventfold process {name!r} exited with {code}")

    def stop(self, name: str) -> None:
        """Stop one process (TERM, then KILL after 20 s)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        """Stop every process still running."""
        for name in list(self.procs):
            self.stop(name)

    def url(self, name: str) -> str:
        """Base URL of an HTTP process."""
        return f"http://127.0.0.1:{self.ports[name]}"

    async def pool(self) -> asyncpg.Pool:
        """A small pool on the benchmark's PostgreSQL."""
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self.settings.database_url, min_size=1, max_size=4
        )
        return pool

    async def projected_offsets(self, pool: asyncpg.Pool) -> int:
        """Sum of the projector's checkpoints on this run's topic (events consumed)."""
        total = await pool.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
            " WHERE topic = $1 AND consumer LIKE '%projector%'",
            self.settings.events_topic,
        )
        return int(total)

    async def topic_size(self) -> int:
        """Messages in this run's topic (sum of end offsets)."""
        from benchmarks.suite.check import end_offsets

        return await end_offsets(self.settings.kafka_bootstrap, self.settings.events_topic)


async def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait for ``/health/ready`` = ok; fail when the process exits (a RuntimeError: an
    optional phase whose process does not start is reported, the suite goes on)."""
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
            try:
                async with session.get(f"{base}/health/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{base} not ready within 90 s")


async def project_burst(bench: Bench, label: str) -> dict[str, Any]:
    """Run ``eventfold process projector --burst`` to the end of the log; time it.

    Also samples the checkpoints every half second: throughput over time.
    """
    pool = await bench.pool()
    try:
        start_offsets = await bench.projected_offsets(pool)
        target = await bench.topic_size()
        cpu0 = children_cpu()
        proc = subprocess.Popen(  # noqa: ASYNC220 - the phase's process under test
            [EXE, "process", "projector", "--burst"], env=bench.env(), stdout=subprocess.DEVNULL
        )
        watch = ProcWatch({"projector": proc.pid}, interval=0.5)
        watch.start()
        t0 = time.perf_counter()
        timeline: list[tuple[float, int]] = []
        progress = Progress(label, target - start_offsets, unit="events")
        while proc.poll() is None:
            done = await bench.projected_offsets(pool) - start_offsets
            timeline.append((time.perf_counter() - t0, done))
            progress.update(done)
            await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - t0
        events = await bench.projected_offsets(pool) - start_offsets
        progress.done(events)
        procs = await watch.stop(events, {"projector": children_cpu() - cpu0})
    finally:
        await pool.close()
    if proc.returncode != 0:
        raise SystemExit(f"projector exited with {proc.returncode}")
    return {
        "events": events,
        "seconds": round(elapsed, 2),
        "events_per_second": round(events / elapsed, 1),
        "processes": procs,
        "timeline": timeline,
        "memory": watch.samples,
    }


async def create_tenants(bench: Bench, session: aiohttp.ClientSession) -> None:
    """Create the run's tenants through the gateway (limits far above the load)."""
    admin = {"Authorization": "Bearer " + issue_token(
        bench.settings.jwt_secret, tenant="*", roles=["platform-admin"])}  # fmt: skip
    limits = {"requests_per_second": 1_000_000, "burst": 1_000_000}
    for t in bench.tenants:
        async with session.post(
            f"{bench.url('ingest')}/v1/tenants",
            json={"id": t, "name": t, "limits": limits},
            headers=admin,
        ) as r:
            if r.status != 202:
                raise SystemExit(f"tenant creation failed: {r.status} {await r.text()}")
        bench.tokens[t] = {"Authorization": "Bearer " + issue_token(
            bench.settings.jwt_secret, tenant=t, roles=["writer"], ttl_seconds=7200)}  # fmt: skip


async def start_pipeline(bench: Bench, session: aiohttp.ClientSession) -> None:
    """Gateway, tenants, projector and read API up, ready for write+read load.

    The tenants are projected before the load: a write to a tenant the projector
    has not created yet is refused with 403.
    """
    await create_tenants(bench, session)
    await project_burst(bench, "tenant creation")
    await bench.start("projector", "process", "projector", http=False)
    await bench.start("api", "serve", "api")


@dataclass(slots=True)
class Loop:
    """What a closed loop did: latencies of the answered calls, and the failed ones by reason."""

    hist: Histogram
    seconds: float
    requests: int
    failures: Counter[str]

    @property
    def ok(self) -> int:
        """Calls that succeeded (their latencies are in :attr:`hist`)."""
        return self.hist.total

    def summary(self) -> dict[str, Any]:
        """Counts (every call: ``ok`` + ``failures`` = ``requests``), seconds and latencies."""
        return {"requests": self.requests, "ok": self.ok, "failures": self.failures.total(),
                "failure_reasons": dict(self.failures.most_common(5)),
                "seconds": round(self.seconds, 2), "latency_ms": self.hist.summary()}  # fmt: skip


def failure_reason(exc: Exception) -> str:
    """How a failed call is counted: its exception's type and message, short."""
    return f"{type(exc).__name__}: {exc}"[:160]


async def closed_loop(
    count: int, concurrency: int, call: Callable[[int], Awaitable[None]], label: str
) -> Loop:
    """Run ``call(i)`` for i < count with ``concurrency`` in flight.

    A call that raises is counted as a failure with its reason (its latency is
    not recorded); the others' latencies are.
    """
    hist = Histogram()
    failures: Counter[str] = Counter()
    it = iter(range(count))
    progress = Progress(label, count, unit="requests")

    async def worker() -> None:
        for i in it:
            t0 = time.perf_counter()
            try:
                await call(i)
            except Exception as exc:
                failures[failure_reason(exc)] += 1
            else:
                hist.record(time.perf_counter() - t0)
            progress.update(hist.total + failures.total())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    progress.done(count)
    return Loop(hist, elapsed, count, failures)


async def open_loop(
    rate: float,
    seconds: float,
    call: Callable[[int], Awaitable[None]],
    label: str,
    max_in_flight: int = 2000,
) -> dict[str, Any]:
    """Start ``call(i)`` at a fixed ``rate`` for ``seconds``; latency from the scheduled time."""
    hist = Histogram()
    total = int(rate * seconds)
    failures: Counter[str] = Counter()
    sem = asyncio.Semaphore(max_in_flight)
    progress = Progress(f"{label} @ {rate:,.0f}/s", total, unit="requests")

    async def one(i: int, scheduled: float) -> None:
        try:
            await call(i)
            hist.record(time.perf_counter() - scheduled)
        except Exception as exc:
            failures[failure_reason(exc)] += 1
        finally:
            sem.release()
            progress.update(hist.total + failures.total())

    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await sem.acquire()
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    progress.done(total)
    return {"target_rate": rate, "achieved_rate": round(hist.total / elapsed, 1),
            "seconds": round(elapsed, 2), "requests": total, "ok": hist.total,
            "failures": failures.total(),
            "failure_reasons": dict(failures.most_common(5)), "latency_ms": hist.summary(),
            "cdf": hist.cdf()}  # fmt: skip


def batch_bodies(workload: Workload, count: int, size: int = 500) -> list[tuple[str, bytes, int]]:
    """The workload's next ``count`` events as ``(tenant, body, events)`` batches of one tenant.

    The route takes one tenant's events, so a batch is up to ``size`` events of one
    tenant (splitting each 500 of the mix by tenant had sent ~10-event requests).
    Round-robin over tenants: a tenant's next batch is sent well after its previous one.
    """
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for tenant, ev in workload.events(count):
        by_tenant.setdefault(tenant, []).append(ev)
    chunks = {t: [evs[i : i + size] for i in range(0, len(evs), size)]
              for t, evs in by_tenant.items()}  # fmt: skip
    return [(t, orjson.dumps(c[k]), len(c[k])) for k in range(max(map(len, chunks.values())))
            for t, c in chunks.items() if k < len(c)]  # fmt: skip


@dataclass(slots=True)
class Poster:
    """POSTs the next of ``bodies`` to the gateway (each body once) and wants 202.

    Counts the events of the requests answered 202 (``events_ok``): a rate in
    events/s counts only those.
    """

    bench: Bench
    session: aiohttp.ClientSession
    #: ``(tenant, body, events in it)``
    bodies: list[tuple[str, bytes, int]]
    events_ok: int = 0
    _pending: Any = None

    def __post_init__(self) -> None:
        self._pending = iter(self.bodies)

    async def __call__(self, _i: int) -> None:
        """One request; raises when it is not answered 202."""
        tenant, body, events = next(self._pending)
        headers = {"Content-Type": "application/json", **self.bench.tokens[tenant]}
        url = f"{self.bench.url('ingest')}/v1/tenants/{tenant}/events"
        async with self.session.post(url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 202:
                raise RuntimeError(f"ingest answered {r.status}")
        self.events_ok += events


async def ingest(bench: Bench, session: aiohttp.ClientSession, sizes: Sizes) -> dict[str, Any]:
    """Batches and single events, at saturation (closed loop) and at fixed rates (open loop).

    Every request carries new events: one sent again would be answered by the
    gateway's duplicate check without a trip to Kafka, a cheaper path.
    """
    out: dict[str, Any] = {}
    gateway = {"ingest": bench.procs["ingest"].pid}

    bodies = batch_bodies(bench.workload, sizes.batch_events)
    watch = ProcWatch({**gateway, "load-generator": os.getpid()})
    watch.start()
    post = Poster(bench, session, bodies)
    loop = await closed_loop(len(bodies), 8, post, "ingest batches")
    out["batches"] = {**loop.summary(), "events": sizes.batch_events, "events_ok": post.events_ok,
                      "batch_events": round(sizes.batch_events / len(bodies), 1),
                      "concurrency": 8,
                      "events_per_second": round(post.events_ok / loop.seconds, 1),
                      "processes": await watch.stop(post.events_ok)}  # fmt: skip
    out["batches_fixed_rate"] = []
    for rate in sizes.batch_rates:
        events = int(rate * sizes.batch_seconds)
        bodies = batch_bodies(bench.workload, events)
        watch = ProcWatch(gateway)
        watch.start()
        post = Poster(bench, session, bodies)
        # The request rate that carries ``rate`` events/s with these batches.
        run = await open_loop(
            len(bodies) / sizes.batch_seconds, sizes.batch_seconds, post,
            f"ingest batches ({rate:,} events/s)",
        )  # fmt: skip
        run.update(target_events_per_second=rate, events=events, events_ok=post.events_ok,
                   batch_events=round(events / len(bodies), 1),
                   achieved_events_per_second=round(post.events_ok / run["seconds"], 1),
                   processes=await watch.stop(post.events_ok))  # fmt: skip
        out["batches_fixed_rate"].append(run)

    needed = sizes.single_saturation + sum(int(r * sizes.fixed_seconds) for r in sizes.fixed_rates)
    post_single = Poster(bench, session, [
        (t, orjson.dumps(ev), 1) for t, ev in bench.workload.events(needed)])  # fmt: skip
    count = sizes.single_saturation
    watch = ProcWatch({**gateway, "load-generator": os.getpid()})
    watch.start()
    loop = await closed_loop(count, SINGLE_CONCURRENCY, post_single, "ingest single events")
    out["single_saturation"] = {**loop.summary(), "concurrency": SINGLE_CONCURRENCY,
                                "requests_per_second": round(loop.ok / loop.seconds, 1),
                                "cdf": loop.hist.cdf(),
                                "processes": await watch.stop(loop.ok)}  # fmt: skip
    out["single_fixed_rate"] = []
    for rate in sizes.fixed_rates:
        watch = ProcWatch(gateway)
        watch.start()
        run = await open_loop(rate, sizes.fixed_seconds, post_single, "ingest single events")
        run["processes"] = await watch.stop(run["ok"])
        out["single_fixed_rate"].append(run)
    bench.published = await bench.topic_size()
    return out


@dataclass(slots=True)
class VisiblePairs:
    """Write one event, then read its record back through the API with the write's token.

    Each leg is timed on its own (``write``: POST until 202; ``read``: GET with the
    consistency token until 200, i.e. the wait for the projection plus the read), so
    the report can say where a pair's time went.
    """

    bench: Bench
    session: aiohttp.ClientSession
    write: Histogram = field(default_factory=Histogram)
    read: Histogram = field(default_factory=Histogram)
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _reader: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        token = issue_token(self.bench.settings.jwt_secret, tenant=self.bench.tenants[0],
                            roles=["reader"], ttl_seconds=7200)  # fmt: skip
        self._reader = {"Authorization": f"Bearer {token}"}

    def reset(self) -> None:
        """Start new leg histograms (and new record ids) for the next run."""
        self.write, self.read = Histogram(), Histogram()
        self._prefix = uuid.uuid4().hex[:6]

    async def __call__(self, i: int) -> None:
        """One write+read pair; raises when either leg is not answered as it should be."""
        bench, tenant = self.bench, self.bench.tenants[0]
        rid = f"e2e{self._prefix}{i}"
        ev = {
            "specversion": "1.0",
            "id": f"e2e-{self._prefix}-{i}",
            "source": "bench/e2e",
            "type": "record.upserted",
            "subject": f"visible/{rid}",
            "data": {"n": i},
        }
        t0 = time.perf_counter()
        async with self.session.post(
            f"{bench.url('ingest')}/v1/tenants/{tenant}/events",
            json=ev,
            headers=bench.tokens[tenant],
        ) as r:
            body = await r.read()
            if r.status != 202:
                raise RuntimeError(f"write answered {r.status}")
        t1 = time.perf_counter()
        self.write.record(t1 - t0)
        async with self.session.get(
            f"{bench.url('api')}/v1/tenants/{tenant}/collections/visible/records/{rid}",
            headers={
                **self._reader,
                "X-Consistency-Token": orjson.loads(body)["consistency_token"],
            },
        ) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"read answered {r.status}")
        self.read.record(time.perf_counter() - t1)

    def legs(self) -> dict[str, dict[str, float]]:
        """Latency summaries of the two legs since the last :meth:`reset`."""
        return {"write_ms": self.write.summary(), "read_ms": self.read.summary()}


async def end_to_end(bench: Bench, session: aiohttp.ClientSession, sizes: Sizes) -> dict[str, Any]:
    """Write-to-visible latency (accepted → readable through the API) at 25/50/75 % load.

    The load levels are shares of the *pipeline's* maximum, measured first with a
    closed loop of write+read pairs: a pair costs the two cores a write, a
    projection and a read, so shares of the single-write maximum would all be
    overloads (earlier runs did that, and their latency was the queue's length).
    """
    pairs = VisiblePairs(bench, session)
    watched = {**{name: p.pid for name, p in bench.procs.items()}, "load-generator": os.getpid()}
    watch = ProcWatch(watched)
    watch.start()
    loop = await closed_loop(sizes.e2e_saturation_pairs, 32, pairs, "write-to-visible, saturation")
    max_rate = loop.ok / loop.seconds
    saturation = {**loop.summary(), "pairs": sizes.e2e_saturation_pairs, "concurrency": 32,
                  "pairs_per_second": round(max_rate, 1), **pairs.legs(),
                  "processes": await watch.stop(loop.ok)}  # fmt: skip
    runs = []
    for share in (0.25, 0.5, 0.75):
        pairs.reset()
        watch = ProcWatch(watched)
        watch.start()
        rate = max(10.0, max_rate * share)
        run = await open_loop(rate, sizes.e2e_seconds, pairs, f"write-to-visible {share:.0%}")
        run["load_share"] = share
        run.update(pairs.legs())
        run["processes"] = await watch.stop(run["ok"])
        run["memory"] = watch.samples
        runs.append(run)
    return {"saturation": saturation, "runs": runs}


async def _run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


async def replay(bench: Bench) -> dict[str, Any]:
    """Time ``eventfold replay`` for one tenant and for all (when the command exists)."""
    if await _run([EXE, "replay", "--help"], bench.env()) != 0:
        return {"available": False, "why": "eventfold replay is not built yet"}
    out: dict[str, Any] = {"available": True}
    # "All tenants" are the workload's tenants, named one by one: a bare `eventfold
    # replay` would also rebuild every tenant of the database the suite shares with
    # development and tests. Named together, they are rebuilt in one pass of the log.
    every = [arg for t in bench.tenants for arg in ("--tenant", t)]
    # Small segments, so the archive holds nearly all of the log: a burst run leaves the
    # open segment of each partition (the tail, read from Kafka after the archive) open,
    # and with the default 8 MiB segments the suite's log would stay almost all open.
    await _run(
        [EXE, "process", "archiver", "--burst"],
        bench.env(EVENTFOLD_ARCHIVE_SEGMENT_BYTES=str(1024 * 1024)),
    )
    for label, argv in (
        ("one_tenant_kafka", ["--tenant", bench.tenants[1]]),
        ("one_tenant_archive", ["--tenant", bench.tenants[2], "--from-archive"]),
        ("all_tenants_kafka", every),
        ("all_tenants_archive", [*every, "--from-archive"]),
    ):
        t0 = time.perf_counter()
        cpu0 = children_cpu()
        tap = ProgressTap(t0)
        proc = await asyncio.create_subprocess_exec(
            EXE, "replay", *argv, "--json", env=bench.env(),
            stdout=asyncio.subprocess.PIPE, stderr=tap.terminal(),
        )  # fmt: skip
        tap.start()
        watch = ProcWatch({"replay": proc.pid}, interval=0.5)
        watch.start()
        reader = asyncio.create_task(proc.communicate())
        await watch_until(watch, reader)
        stdout, _ = await reader
        elapsed = time.perf_counter() - t0
        progress = await asyncio.to_thread(tap.samples)
        try:
            report: dict[str, Any] = orjson.loads(stdout)
        except orjson.JSONDecodeError:
            report = {"output": stdout[-2000:].decode(errors="replace")}
        events = sum(int(t.get("events") or 0) for t in report.get("tenants", []))
        archived = sum(int(t.get("archive_events") or 0) for t in report.get("tenants", []))
        procs = await watch.stop(max(events, 1), {"replay": children_cpu() - cpu0})
        out[label] = {"exit": proc.returncode, "seconds": round(elapsed, 2), "events": events,
                      "archive_events": archived,
                      "events_per_second": round(events / elapsed, 1) if events else None,
                      "processes": procs, "report": report, "progress": progress}  # fmt: skip
        if label.endswith("_kafka"):
            # One tenant's rebuild from Kafka reads every tenant's records (picked by key):
            # the log it scans is the measure of its speed, the tenant's share is small.
            scanned = await bench.topic_size()
            out[label]["log_records_read"] = scanned
            out[label]["log_records_per_second"] = round(scanned / elapsed, 1)
    return out


class ProgressTap:
    """The progress bar of an ``eventfold replay`` as ``(seconds, events, share)`` samples.

    The command draws its bar (a redraw every 0.2 s) only on a terminal, so its
    stderr is a pseudo-terminal whose output a thread reads and parses.
    """

    _LINE = re.compile(rb"(\d+) events, [\d,]+ events/s, [\d.]+s(?:, (\d+)%)?")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._master, self._slave = pty.openpty()
        self._points: list[tuple[float, int, float | None]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)

    def terminal(self) -> int:
        """The file descriptor to give the process as its stderr."""
        return self._slave

    def start(self) -> None:
        """Read once the process holds the terminal (our copy closed: EOF when it exits)."""
        os.close(self._slave)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            now = time.perf_counter() - self.t0
            *lines, pending = (pending + data).replace(b"\n", b"\r").split(b"\r")
            for line in lines:
                found = self._LINE.search(line)
                if found:
                    share = int(found[2]) / 100 if found[2] else None
                    self._points.append((round(now, 2), int(found[1]), share))
        os.close(self._master)

    def samples(self) -> list[tuple[float, int, float | None]]:
        """Every sample, once the process has exited."""
        self._thread.join(30)
        return self._points


async def watch_until(watch: ProcWatch, task: asyncio.Task[Any]) -> None:
    """Let ``watch`` sample until ``task`` is done (CPU is read before the process is reaped)."""
    await asyncio.wait({task})


def rss_peak(pid: int) -> float:
    """Peak RSS (MiB) of a running process."""
    from benchmarks.suite.procstat import rss_mib

    return round(rss_mib(pid)[1], 1)
