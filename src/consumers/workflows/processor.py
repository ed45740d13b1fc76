"""The ``workflows`` processor: takes the inbox, claims due runs, drives them (see the package)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import orjson

from consumers.runtime.kafka import start_publisher
from consumers.workflows import effects, store
from consumers.workflows.publishing import GroupPublisher
from consumers.workflows.store import Claimed, InboxRow, Release, Save
from eventfold import actors, tracing
from eventfold.backoff import Backoff
from eventfold.datakeys import Sealer
from eventfold.db import WORKFLOW_CHANNEL, connect
from eventfold.egress import AllowList, guarded_session
from eventfold.envelope import CloudEvent
from eventfold.groupcommit import Batcher
from eventfold.kafka import stop_client
from eventfold.metrics import Metrics
from eventfold.sealing import SealError, keyring
from eventfold.settings import Settings
from eventfold.tenancy import TenantDirectory
from eventfold.workflows import ids, machine
from eventfold.workflows.context import render
from eventfold.workflows.definition import HEADERS_PURPOSE
from eventfold.workflows.machine import Effect, Emit, Result, RunState, StepState

log = logging.getLogger("eventfold.workflows")

#: How often to look at the inbox and for due runs when idle.
POLL_SECONDS = 0.1
#: Inbox rows taken per transaction, and per tenant in it.
INBOX_BATCH = 200
INBOX_PER_TENANT = 50
#: How often the gauges are refreshed (and finished runs past retention forgotten).
GAUGE_SECONDS = 5.0
#: Finished runs are kept this long in the processor's table (the read model keeps them).
RETENTION_DAYS = 7.0
#: How long stopping waits for the writes and publishes under way.
CLOSE_SECONDS = 10.0
#: Definitions cached (versions never change; the cache only bounds memory).
DEFINITIONS_CACHED = 4096
#: Kinds whose step waits (for a time, for a person) instead of performing an effect.
WAIT_KINDS = ("delay", "approval")


def envelope(tenant: str, run: str, emit: Emit) -> dict[str, Any]:
    """The CloudEvent logging ``emit`` (subject ``runs/<run>``, caused by the run)."""
    return {
        "specversion": "1.0",
        "id": emit.id,
        "source": effects.SOURCE,
        "type": emit.type,
        "subject": f"runs/{run}",
        "time": emit.data["at"],
        "datacontenttype": "application/json",
        "data": emit.data,
        "tenant": tenant,
        "causationid": run,
        "actor": actors.workflow(run),
    }


class WorkflowProcessor:
    """Starts a run per matching applied event and drives every run to its end."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.topic = settings.events_topic
        self.allow = AllowList.parse(settings.webhook_allow_hosts)
        self.mailer = effects.Mailer(
            effects.Smtp.parse(settings.smtp_url, settings.smtp_from), settings.smtp_connections
        )
        self.lease = settings.workflow_lease_seconds
        self._keys = keyring(settings)
        self._definitions: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._by_tenant: Counter[str] = Counter()
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        #: Whether the last claim may have left due runs for want of room (in all or
        #: for a tenant at its cap): then a run that ends wakes the loop to claim them.
        self._capped = False
        self._ready = False
        # Each run's transitions and releases, written together with other runs' (group
        # commit): one statement per event-loop pass instead of one per run.
        self._saves: Batcher[Save, int | None] = Batcher(
            functools.partial(store.save_many, pool),
            functools.partial(store.save, pool),
            key=lambda s: s.run,
            name="workflow-saves",
        )
        self._releases: Batcher[Release, bool] = Batcher(
            functools.partial(store.release_many, pool),
            functools.partial(store.release, pool),
            key=lambda r: r.run,
            name="workflow-releases",
        )

    def _sealer(self) -> Sealer:
        """Encrypts what this processor writes into personal collections."""
        return Sealer(self.pool, TenantDirectory(self.pool), keyring(self.settings))

    def is_ready(self) -> bool:
        """Whether it takes triggers and drives runs: its publisher to Kafka started and
        its last round on PostgreSQL (the first one included) answered."""
        return self._ready

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Work until ``stop`` is set (or, in burst mode, until nothing is due)."""
        stop = stop or asyncio.Event()
        kafka = await start_publisher(
            self.settings,
            self.metrics,
            stop,
            client_id="eventfold-workflows",
            sealer=self._sealer(),
        )
        publisher = GroupPublisher(kafka)
        # No cap per host below the processor's own: the caps per tenant keep one
        # tenant's slow third party from taking every slot (aiohttp's default of 10
        # per host queued every tenant calling a shared host behind each other).
        concurrency = self.settings.workflow_concurrency
        session = guarded_session(self.allow, limit=concurrency, limit_per_host=concurrency)
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="workflow-leases")
        listener = asyncio.create_task(self._listen(stop), name="workflow-inbox-listener")
        gauges_at = 0.0
        # A round that loses PostgreSQL pauses here rather than failing the processor:
        # the runs in flight go on (their effects are under way), and the supervisor's
        # restart would cancel them.
        backoff = Backoff(0.5, 5.0)
        try:
            while not stop.is_set():
                # Cleared before the round looks, not after: a trigger handed over (or a
                # run ended) while the round's queries were under way wakes the next
                # round at once instead of at the next poll.
                self._wake.clear()
                try:
                    took, leased = await self._intake()
                    self._start(publisher, session, leased)
                    claimed = await self._claim(publisher, session)
                    if time.monotonic() - gauges_at > GAUGE_SECONDS:
                        gauges_at = time.monotonic()
                        await self._gauges()
                    self._ready = True
                    backoff.reset()
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    self._ready = False
                    log.warning("workflow round failed", extra={"error": repr(exc)})
                    await backoff.sleep(stop)
                    continue
                if burst and not took and not claimed and not self._driving:
                    return
                if not took and not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            self._ready = False
            heartbeat.cancel()
            listener.cancel()
            # Runs in flight stop here; their leases run out and another processor
            # (or this one, restarted) goes on from their last recorded transition.
            for task in list(self._driving.values()):
                task.cancel()
            await asyncio.gather(
                heartbeat, listener, *self._driving.values(), return_exceptions=True
            )
            # What the runs handed over before they stopped is written (or given up on).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await asyncio.gather(
                        self._saves.close(), self._releases.close(), publisher.close()
                    )
            await session.close()
            await self.mailer.close()
            await stop_client(kafka.stop, "workflows producer")

    # -- the inbox ------------------------------------------------------------

    async def _intake(self, *, careful: bool = False) -> tuple[int, list[Claimed]]:
        """Turn inbox rows into runs (or commands into transitions), in one transaction;
        the rows taken, and the new runs leased to this processor to drive at once.

        A row that fails for a reason of its own would fail every batch it is in:
        after a failed batch the rows are taken ``careful``ly, each in a savepoint,
        and one that still fails stays in the inbox (logged, tried again next round)
        while the others go on.
        """
        leased: list[Claimed] = []
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                rows = await store.claim_inbox(conn, self.topic, INBOX_PER_TENANT, INBOX_BATCH)
                done: list[int] = []
                # The new runs of the batch, inserted together (one statement, not one each).
                new: list[store.NewRun] = []
                for row in rows:
                    if not careful:
                        await self._take(conn, row, new)
                        done.append(row.id)
                        continue
                    try:
                        async with conn.transaction():
                            one: list[store.NewRun] = []
                            await self._take(conn, row, one)
                            leased += await self._insert_runs(conn, one, leased)
                        done.append(row.id)
                    except (OSError, asyncpg.InterfaceError, TimeoutError):
                        raise
                    except Exception as exc:
                        log.error(
                            "workflow inbox row failed",
                            extra={"row": row.id, "tenant": row.tenant, "error": repr(exc)},
                        )
                leased += await self._insert_runs(conn, new, leased, handled=done)
        except (OSError, asyncpg.InterfaceError, TimeoutError):
            raise
        except Exception as exc:
            if careful:
                raise
            log.warning("workflow inbox batch failed, taking it row by row",
                        extra={"error": repr(exc)})  # fmt: skip
            return await self._intake(careful=True)
        return len(done), leased

    async def _take(self, conn: asyncpg.Connection, row: InboxRow, new: list[store.NewRun]) -> None:
        if row.kind == "trigger":
            await self._start_run(conn, row, new)
        else:
            await self._command(conn, row)

    async def _insert_runs(
        self,
        conn: asyncpg.Connection,
        new: list[store.NewRun],
        leased: list[Claimed],
        handled: list[int] | None = None,
    ) -> list[Claimed]:
        """Insert ``new`` (and drop the ``handled`` inbox rows), those there is room for
        leased to this processor (beside the runs it drives and the ``leased`` of this
        intake so far); the leased ones inserted, to drive once the intake commits. A
        trigger's first step then waits for no claim; the others are claimed when there
        is room, tenants in turn (:meth:`_claim`)."""
        room = self.settings.workflow_concurrency - len(self._driving) - len(leased)
        per_tenant = self.settings.workflow_per_tenant
        taken = Counter(self._by_tenant) + Counter(c.tenant for c in leased)
        leasing: list[store.NewRun] = []
        for run in new:
            if room > 0 and taken[run.tenant] < per_tenant:
                room -= 1
                taken[run.tenant] += 1
                run = dataclasses.replace(run, lease_seconds=self.lease)
            leasing.append(run)
        out: list[Claimed] = []
        for run in await store.insert_runs(conn, leasing, handled or ()):
            self.metrics.workflow_runs_started.inc()
            if run.status in machine.FINISHED:
                self.metrics.workflow_runs_finished.labels(run.status).inc()
            if run.lease_seconds is not None:
                out.append(Claimed(run.run, run.tenant, run.state, 0, run.pending))
        return out

    async def _start_run(
        self, conn: asyncpg.Connection, row: InboxRow, new: list[store.NewRun]
    ) -> None:
        """The run ``row`` starts, added to ``new`` (a trigger that starts none adds nothing)."""
        assert row.workflow is not None
        assert row.version is not None
        event = row.event
        depth = 1
        cause = event.get("causationid")
        if isinstance(cause, str) and cause:
            parent = await store.parent(conn, row.tenant, cause)
            if parent is not None:
                if parent[0] == row.workflow:
                    return  # a run's own writes never start its workflow again
                depth = parent[1] + 1
        key = (row.tenant, row.workflow, row.version)
        definition = self._definitions.get(key)
        if definition is None:
            definition = await store.definition(conn, row.tenant, row.workflow, row.version)
            if definition is None:
                log.warning("workflow version missing", extra={"workflow": row.workflow})
                return
            if len(self._definitions) >= DEFINITIONS_CACHED:
                self._definitions.clear()
            self._definitions[key] = definition  # versions never change
        run = ids.run_id(row.tenant, row.workflow, str(event.get("id", "")))
        t = machine.start(
            run=run,
            tenant=row.tenant,
            workflow=row.workflow,
            version=row.version,
            steps=definition["steps"],
            trigger=event,
            record=row.record,
            depth=depth,
            now=time.time(),
        )
        new.append(
            store.NewRun(
                run=run,
                tenant=row.tenant,
                topic=self.topic,
                workflow=row.workflow,
                depth=depth,
                status=t.state.status,
                state=t.state.to_json(),
                pending=[envelope(row.tenant, run, e) for e in t.events],
            )
        )

    async def _command(self, conn: asyncpg.Connection, row: InboxRow) -> None:
        if row.run is None:
            return
        locked = await store.lock_run(conn, row.tenant, row.run)
        if locked is None:
            return
        doc, pending = locked
        state = RunState.from_json(doc)
        data = row.event.get("data") or {}
        comment = data.get("comment") if isinstance(data, dict) else None
        signal: machine.Signal = row.kind  # type: ignore[assignment]
        step = state.current
        t = machine.on_signal(state, signal, row.step, comment, time.time())
        if t is None:
            return  # finished already, or the step no longer waits
        _waited(state, step)
        pending = pending + [envelope(row.tenant, row.run, e) for e in t.events]
        await store.signal_run(conn, row.run, t.state.status, t.state.to_json(), pending)
        if t.state.finished:
            self.metrics.workflow_runs_finished.labels(t.state.status).inc()

    # -- driving runs -----------------------------------------------------------

    async def _claim(self, publisher: GroupPublisher, session: aiohttp.ClientSession) -> int:
        room = self.settings.workflow_concurrency - len(self._driving)
        if room <= 0:
            self._capped = True
            return 0
        per_tenant = self.settings.workflow_per_tenant
        busy = [t for t, n in self._by_tenant.items() if n >= per_tenant]
        claimed = await store.claim_runs(
            self.pool,
            self.topic,
            busy_tenants=busy,
            per_tenant=per_tenant,
            limit=room,
            lease_seconds=self.lease,
        )
        took = Counter(item.tenant for item in claimed)
        self._capped = (
            bool(busy) or len(claimed) >= room or any(n >= per_tenant for n in took.values())
        )
        self._start(publisher, session, claimed)
        return len(claimed)

    def _start(
        self, publisher: GroupPublisher, session: aiohttp.ClientSession, runs: list[Claimed]
    ) -> None:
        """Drive each of ``runs`` (leased to this processor) in a task of its own."""
        for item in runs:
            if item.id in self._driving:
                continue  # still ending here (its lease was re-taken): leave it be
            self._by_tenant[item.tenant] += 1
            task = asyncio.create_task(self._drive(publisher, session, item), name=f"run-{item.id}")
            self._driving[item.id] = task
            task.add_done_callback(functools.partial(self._done, item))

    def _done(self, item: Claimed, _: asyncio.Task[None]) -> None:
        self._driving.pop(item.id, None)
        self._by_tenant[item.tenant] -= 1
        if self._by_tenant[item.tenant] <= 0:
            del self._by_tenant[item.tenant]
        if self._capped:
            # Due runs may have been left for want of room: the next round claims them.
            # Otherwise a round per ended run would only find nothing (hundreds a second).
            self._wake.set()

    async def _drive(
        self, publisher: GroupPublisher, session: aiohttp.ClientSession, item: Claimed
    ) -> None:
        """Publish the run's pending events, then act until it waits or ends."""
        run, tenant, rev, doc, pending = item.id, item.tenant, item.rev, item.state, item.pending
        try:
            while True:
                if pending:
                    # The run's events join its trigger's trace (their publish its child).
                    with tracing.within(_trigger_carrier(doc.get("context"))):
                        await self._publish(publisher, tenant, run, pending)
                    if any(e.get("type") == "workflow.run.started" for e in pending):
                        self._observe_trigger(doc)
                state = RunState.from_json(doc)
                now = time.time()
                effect = machine.next_effect(state, now)
                if effect is not None:
                    result = await self._perform(publisher, session, tenant, effect, state)
                    t = machine.on_result(state, result, time.time())
                    self._observe_step(state, effect, result)
                elif machine.timer_due(state, now):
                    step = state.current
                    t = machine.on_timer(state, now)
                    _waited(state, step)
                else:
                    if await self._releases.submit(Release(run, rev, state.wake_at)):
                        return
                    fresh = await store.reload(self.pool, run)
                    if fresh is None:
                        return
                    rev, doc, pending = fresh.rev, fresh.state, fresh.pending
                    continue
                events = [envelope(tenant, run, e) for e in t.events]
                saved = await self._saves.submit(Save(
                    run, rev, status=t.state.status, state=t.state.to_json(),
                    pending=events, wake_at=t.state.wake_at, lease_seconds=self.lease,
                ))  # fmt: skip
                if saved is None:
                    # A command (cancel, approve, reject) changed the run meanwhile: its
                    # state wins; what this effect did is not recorded.
                    fresh = await store.reload(self.pool, run)
                    if fresh is None:
                        return
                    rev, doc, pending = fresh.rev, fresh.state, fresh.pending
                    continue
                if t.state.finished:
                    self.metrics.workflow_runs_finished.labels(t.state.status).inc()
                rev, doc, pending = saved, t.state.to_json(), events
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not recorded: the lease runs out and the run goes on from its last transition.
            log.warning("workflow run interrupted", extra={"run": run, "error": repr(exc)})

    async def _publish(
        self, publisher: GroupPublisher, tenant: str, run: str, pending: list[dict[str, Any]]
    ) -> None:
        events = [CloudEvent.model_validate(e) for e in pending]
        await publisher.publish(tenant, events, actor=actors.workflow(run))

    async def _perform(
        self,
        publisher: GroupPublisher,
        session: aiohttp.ClientSession,
        tenant: str,
        effect: Effect,
        state: RunState,
    ) -> Result:
        """Perform ``effect`` once, in a span that is a child of the run's trigger event."""
        started = time.perf_counter()
        with tracing.span(
            f"workflow step {effect.kind}",
            kind="internal" if effect.kind == "record" else "client",
            parent=_trigger_carrier(state.context),
            attributes=_step_attributes(state, effect.step, effect.kind, effect.attempt),
        ) as span:
            result = await self._effect(publisher, session, tenant, effect, state)
            if not result.ok:
                tracing.failed(span, result.error or "failed")
        self.metrics.workflow_step_seconds.labels(
            effect.kind, "ok" if result.ok else "retry" if result.retriable else "failed"
        ).observe(time.perf_counter() - started)
        return result

    async def _effect(
        self,
        publisher: GroupPublisher,
        session: aiohttp.ClientSession,
        tenant: str,
        effect: Effect,
        state: RunState,
    ) -> Result:
        if effect.kind == "http":
            try:
                headers = self._headers(state)
            except SealError:
                # No key of this deployment opens them (a key removed from the ring).
                headers, result = None, Result(ok=False, error="the headers cannot be unsealed")
            if headers is not None or not state.steps[state.index].get("headers_sealed"):
                result = await effects.http(session, self.allow, effect, headers)
        elif effect.kind == "email":
            result = await effects.email(self.mailer, effect)
        else:
            result = await effects.record(publisher, tenant, effect, machine.iso(time.time()))
        return result

    def _headers(self, state: RunState) -> dict[str, Any] | None:
        """The current http step's headers, unsealed and rendered from the run context
        (kept sealed at rest: in the log, the read model and the run's state)."""
        sealed = state.steps[state.index].get("headers_sealed")
        if not sealed:
            return None
        raw = self._keys.open(str(sealed), purpose=HEADERS_PURPOSE)
        rendered: dict[str, Any] = render(orjson.loads(raw), state.context)
        return rendered

    def _observe_step(self, state: RunState, effect: Effect, result: Result) -> None:
        step = state.progress[state.index - 1] if result.ok else state.current
        if step is not None and step.status in ("succeeded", "failed"):
            self.metrics.workflow_step_attempts.labels(effect.kind).observe(step.attempts)

    def _observe_trigger(self, doc: dict[str, Any]) -> None:
        """Trigger → first step: from the trigger event's time to its run's start logged."""
        at = _parse_time((doc.get("context") or {}).get("trigger", {}).get("time"))
        if at is not None:
            self.metrics.workflow_trigger_seconds.observe(max(0.0, time.time() - at))

    async def _listen(self, stop: asyncio.Event) -> None:
        """Wake the loop when the projector hands over work of this topic. Only an
        optimisation: the loop polls every :data:`POLL_SECONDS` whatever happens here."""

        def wake(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload == self.topic:
                self._wake.set()

        backoff = Backoff(0.5, 10.0)
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self.settings.database_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(WORKFLOW_CHANNEL, wake)
                backoff.reset()
                while not stop.is_set() and not lost.is_set():
                    await _sleep_or_stop(stop, 15.0)
                    await conn.execute("SELECT 1", timeout=5)  # a stalled server tells no one
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.info("workflow listener down, polling", extra={"error": repr(exc)})
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await backoff.sleep(stop)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, self.lease / 3)
            if self._driving:
                try:
                    await store.renew(self.pool, list(self._driving), self.lease)
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("workflow leases not renewed", extra={"error": repr(exc)})

    async def _gauges(self) -> None:
        timers, oldest, inbox = await store.gauges(self.pool, self.topic)
        self.metrics.workflow_timers_pending.set(timers)
        self.metrics.workflow_oldest_waiting_seconds.set(oldest)
        self.metrics.workflow_inbox.set(inbox)
        await store.prune(self.pool, self.topic, RETENTION_DAYS, 1000)


def _trigger_carrier(context: dict[str, Any] | None) -> dict[str, str] | None:
    """The trace context of a run's trigger event (``context``: the run's context)."""
    if not tracing.enabled() or not context:
        return None
    trigger = context.get("trigger")
    return tracing.doc_carrier(trigger if isinstance(trigger, dict) else None)


def _step_attributes(state: RunState, step: str, kind: str, attempt: int) -> dict[str, Any] | None:
    """A step span's attributes (None, and nothing built, when tracing is off)."""
    if not tracing.enabled():
        return None
    return {
        "eventfold.tenant": state.tenant,
        "eventfold.event.id": state.trigger_event,
        "eventfold.workflow.id": state.workflow,
        "eventfold.workflow.version": state.version,
        "eventfold.workflow.run": state.id,
        "eventfold.workflow.step": step,
        "eventfold.workflow.step.kind": kind,
        "eventfold.workflow.step.attempt": attempt,
    }


def _waited(state: RunState, step: StepState | None) -> None:
    """The span of a wait step (delay, approval) that a transition has just ended: from
    the step's start to its end, a child of the run's trigger event (the wait may have
    begun in another process, or before a restart)."""
    if (
        not tracing.enabled()
        or step is None
        or step.kind not in WAIT_KINDS
        or step.status not in machine.FINISHED
        or step.started_at is None
    ):
        return
    tracing.past_span(
        f"workflow step {step.kind}",
        start=step.started_at,
        end=step.finished_at or time.time(),
        parent=_trigger_carrier(state.context),
        attributes={
            **(_step_attributes(state, step.id, step.kind, step.attempts) or {}),
            "eventfold.workflow.step.status": step.status,
        },
        error=None if step.status == "succeeded" else step.error or step.status,
    )


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
