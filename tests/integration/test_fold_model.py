"""A Hypothesis state machine over the real projection: random upserts, patches,
deletes, conditional writes and duplicates, applied through ``apply_batch`` in
random batch splits and with redeliveries, always equal a simple model.

Every event goes to two tenants, so a batch holding both reads their state
ahead on a second connection (when the rule draws the reads pool) while one
holding a single tenant reads it on the batch's own: both must fold alike."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from eventfold import db
from eventfold.envelope import CloudEvent
from eventfold.mergepatch import merge_patch
from eventfold.projection.batch import LogEvent, apply_batch
from eventfold.settings import Settings

KEYS = st.sampled_from(["a", "b"])
# No U+0000: the gateway refuses it at the edge (PostgreSQL cannot store it) and
# the projector parks it; both are tested on their own. No lone surrogates: they
# are not UTF-8, so no JSON request or log record can carry one.
TEXT = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=3
)
VALUES = st.one_of(st.integers(-5, 5), TEXT, st.booleans())
DOCS = st.dictionaries(st.sampled_from(["x", "y", "z"]), VALUES, max_size=3)
PATCHES = st.dictionaries(
    st.sampled_from(["x", "y", "z"]), st.one_of(st.none(), VALUES), max_size=3
)
# Mostly unconditional: a random expected version is nearly always a mismatch.
EXPECT = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 3))
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FoldMachine(RuleBasedStateMachine):
    """The log grows by rules; ``flush`` applies the unapplied tail in random batches."""

    dsn: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(db.connect(self.dsn))
        #: The projector's pool for reading tenants' state ahead of the writes.
        self.reads: asyncpg.Pool = self.loop.run_until_complete(
            db.create_pool(self.dsn, min_size=1, max_size=2)
        )
        self.tenant = f"fm{uuid.uuid4().hex[:10]}"
        #: Receives every event the first tenant does (same ids, its own schema).
        self.twin = f"{self.tenant}b"
        self.topic = f"model-{self.tenant}"
        self.log: list[LogEvent] = []
        self.applied_upto = 0
        #: The model: key → (version, live document or None for deleted).
        self.model: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self.seen: set[str] = set()

    def teardown(self) -> None:
        async def close() -> None:
            for tenant in (self.tenant, self.twin):
                await self.conn.execute(f'DROP SCHEMA IF EXISTS "t_{tenant}" CASCADE')
            await self.conn.close()
            await self.reads.close()

        self.loop.run_until_complete(close())
        self.loop.close()

    def _append(self, type_: str, key: str, data: Any, expected: int | None) -> None:
        n = len(self.log)
        for tenant in (self.tenant, self.twin):
            event = CloudEvent(
                specversion="1.0",
                id=f"ev{n}",
                source="model",
                type=type_,
                subject=f"docs/{key}",
                tenant=tenant,
                time=T0 + timedelta(seconds=n),
                data=data,
                expectedversion=expected,
            )
            self.log.append(LogEvent(0, len(self.log), 0, event, event.to_json()))
        self._model(event)

    def _model(self, ev: CloudEvent) -> None:
        if ev.id in self.seen:
            return
        self.seen.add(ev.id)
        key = (ev.subject or "").split("/")[1]
        version, doc = self.model.get(key, (0, None))
        live = version if doc is not None else 0
        if ev.expectedversion is not None and ev.expectedversion != live:
            return
        if ev.type == "record.upserted":
            self.model[key] = (version + 1, dict(ev.data))
        elif doc is None:
            return
        elif ev.type == "record.patched":
            self.model[key] = (version + 1, merge_patch(doc, ev.data))
        else:
            self.model[key] = (version + 1, None)

    @initialize()
    def create_tenant(self) -> None:
        for tenant in (self.tenant, self.twin):
            event = CloudEvent(
                specversion="1.0",
                id=f"tenant.created:{tenant}",
                source="model",
                type="tenant.created",
                subject=tenant,
                tenant=tenant,
                time=T0,
                data={"id": tenant, "name": "model"},
            )
            self.log.append(LogEvent(0, len(self.log), 0, event, event.to_json()))
        self.seen.add("tenant.created")  # one per tenant's history

    @rule(key=KEYS, doc=DOCS, expected=EXPECT)
    def upsert(self, key: str, doc: dict[str, Any], expected: int | None) -> None:
        self._append("record.upserted", key, doc, expected)

    @rule(key=KEYS, patch=PATCHES, expected=EXPECT)
    def patch(self, key: str, patch: dict[str, Any], expected: int | None) -> None:
        self._append("record.patched", key, patch, expected)

    @rule(key=KEYS, expected=EXPECT)
    def delete(self, key: str, expected: int | None) -> None:
        self._append("record.deleted", key, None, expected)

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """A producer retry: an earlier event again, at a new offset."""
        if len(self.log) < 2:
            return
        original = self.log[data.draw(st.integers(1, len(self.log) - 1))]
        self.log.append(LogEvent(0, len(self.log), 0, original.event, original.raw))

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        """Apply the tail in random batches; sometimes redeliver already applied events."""
        end = len(self.log)
        start = self.applied_upto
        if data.draw(st.booleans()) and start > 0:
            start = data.draw(st.integers(0, start))  # a redelivery after a rebalance
        cuts = sorted(set(data.draw(st.lists(st.integers(start, end), max_size=4))))
        bounds = [start, *cuts, end]
        for lo, hi in itertools.pairwise(bounds):
            if lo < hi:
                reads = self.reads if data.draw(st.booleans()) else None
                self.loop.run_until_complete(
                    apply_batch(
                        self.conn,
                        consumer=self.topic,
                        topic=self.topic,
                        events=self.log[lo:hi],
                        reads=reads,
                    )
                )
        self.applied_upto = max(self.applied_upto, end)

    @invariant()
    def projection_equals_model(self) -> None:
        if self.applied_upto < len(self.log) or not self.log:
            return
        for tenant in (self.tenant, self.twin):
            rows = self.loop.run_until_complete(
                self.conn.fetch(f'SELECT id, version, data, deleted FROM "t_{tenant}".records')
            )
            actual = {r["id"]: (r["version"], None if r["deleted"] else r["data"]) for r in rows}
            assert actual == self.model, tenant
            history = self.loop.run_until_complete(
                self.conn.fetchval(f'SELECT count(*) FROM "t_{tenant}".events')
            )
            assert history == len(self.seen), tenant


# The machine runs in a thread of its own while the session's processors go on in
# the main one, drawing from the ``random`` module (backoff jitter, partition keys):
# Hypothesis sees the shared global state move during a draw and takes it for the
# strategy's doing. Nothing here draws from ``random``.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_fold_state_machine(stack: Settings) -> None:
    FoldMachine.dsn = stack.database_url
    FoldMachine.TestCase.settings = settings(
        max_examples=150,
        stateful_step_count=25,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    # The machine drives its own event loop: run it in a thread of its own so
    # that, whatever happens in it, the session's loop is never touched.
    await asyncio.to_thread(FoldMachine.TestCase().runTest)
