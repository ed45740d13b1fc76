"""One batch of the log folded into the projections, in one transaction.

The batch's partition checkpoints are locked first and written last in the
same transaction, so a batch is applied entirely or not at all, and never twice.
When a batch fails on an event's data, it is applied again in *careful* mode:
each event in its own savepoint, the failing one a dead letter (with every later event
of its record behind it) while the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import asyncpg
import orjson

from eventfold import datakeys, db, deadletters, readmodel
from eventfold.datakeys import ERASED, KeyCache
from eventfold.deadletters import DeadLetter
from eventfold.envelope import CloudEvent, decode_event
from eventfold.eventtypes.names import is_custom
from eventfold.faults import is_retriable
from eventfold.fold import RECORD_TYPES, Outcome, Record, apply
from eventfold.ids import is_valid
from eventfold.livefeed import LiveEvent
from eventfold.projection import eventtypes, tenants, webhooks, workflows
from eventfold.projection.handlers import HANDLERS
from eventfold.readmodel import Target
from eventfold.replay import is_replay
from eventfold.tenancy import tenant_lock

log = logging.getLogger("eventfold.projection")

OnDeadLetters = Callable[[Sequence[DeadLetter]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """An event read from the log with its position; ``event`` is None when undecodable."""

    partition: int
    offset: int
    timestamp_ms: int
    event: CloudEvent | None
    #: The envelope as history stores it (no re-serialisation per event): as it is in
    #: the log, or with its data decrypted (then None where that cannot be spliced).
    raw: bytes | None = None
    #: The envelope as it is in the log when ``raw`` holds its data decrypted: what a
    #: dead letter carries, so a personal record's data never leaves unencrypted.
    sealed: bytes | None = None

    @property
    def logged(self) -> bytes | None:
        """The envelope as it is in the log (None when the record had no value)."""
        return self.sealed if self.sealed is not None else self.raw


def log_event(partition: int, offset: int, timestamp_ms: int, value: bytes | None) -> LogEvent:
    """A log record as the fold takes it: decoded when it can be (``event`` None otherwise)."""
    try:
        event = decode_event(value) if value else None
    except ValueError:
        event = None
    return LogEvent(
        partition=partition, offset=offset, timestamp_ms=timestamp_ms, event=event, raw=value
    )


async def read_events(
    records: Sequence[tuple[int, int, int, bytes | None]], keys: KeyCache, pool: asyncpg.Pool
) -> list[LogEvent]:
    """Log records ``(partition, offset, timestamp_ms, value)`` as the fold takes them,
    the data of personal records opened already.

    What :func:`log_event` makes, but each encrypted envelope is opened as parsed JSON,
    before its one validation, with keys read here for those not in memory (the
    projector reads its next batch while the last one is written). The fold checks
    again that their keys are live (:func:`_opened`): an erasure folded meanwhile
    forgets them. An envelope that does not open here is left sealed for the fold.
    """
    docs: list[Any] = []
    for _, _, _, value in records:
        try:
            docs.append(orjson.loads(value) if value else None)
        except orjson.JSONDecodeError:
            docs.append(None)
    named = [datakeys.sealed_with(doc) for doc in docs]
    try:
        await keys.load_named(pool, [n for n in named if n is not None])
    except Exception as exc:
        # Not fatal here: what stays sealed is opened by the fold, with its retries and
        # dead letters (a database away, a key the keyring cannot open).
        log.info("data keys not read ahead", extra={"error": repr(exc)})
    out: list[LogEvent] = []
    for (partition, offset, at, value), doc, name in zip(records, docs, named, strict=True):
        raw, sealed = value, None
        key = keys.get(name[1]) if name is not None else None
        if key is not None and value is not None:
            try:
                raw, sealed = datakeys.open_doc(doc, value, key), value
            except datakeys.DataKeyError:
                raw, sealed = value, None  # left sealed: the fold parks it
        try:
            event = CloudEvent.model_validate(doc) if doc is not None else None
        except ValueError:
            event, raw, sealed = None, value, None
        out.append(LogEvent(partition, offset, at, event, raw, sealed))
    return out


@dataclass(slots=True)
class BatchResult:
    """What a batch did, for metrics and logs."""

    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    #: Events of deleted tenants: folded into nothing (their tenant is gone for good).
    discarded: int = 0
    #: Events of tenants placed on another database server: that server's projector's.
    elsewhere: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Tenants set aside by this batch because they were too slow to write.
    deferred: set[str] = field(default_factory=set)
    positions: dict[int, int] = field(default_factory=dict)
    newest_event_time: datetime | None = None
    #: Applied events to push to the live streams once the batch commits.
    live: list[LiveEvent] = field(default_factory=list)
    #: Tenants whose ``tenant.deleted`` this batch applied (their Redis keys go after it).
    deleted: set[str] = field(default_factory=set)

    def add(self, other: BatchResult) -> None:
        """Fold the counts of ``other`` (one careful step) into this result."""
        self.applied += other.applied
        self.rejected += other.rejected
        self.duplicates += other.duplicates
        self.discarded += other.discarded
        self.elsewhere += other.elsewhere
        self.dead_letters += other.dead_letters
        self.deferred |= other.deferred
        self.live += other.live
        self.deleted |= other.deleted
        if other.newest_event_time is not None and (
            self.newest_event_time is None or other.newest_event_time > self.newest_event_time
        ):
            self.newest_event_time = other.newest_event_time


def budget_sql(budget_ms: int, *, local: bool) -> str:
    """SQL bounding each statement and lock wait by ``budget_ms``: for the transaction
    (``local``) or the session; both settings in one simple-protocol round trip."""
    ms, scope = int(budget_ms), "LOCAL " if local else ""
    return f"SET {scope}statement_timeout = {ms}; SET {scope}lock_timeout = {ms}"


async def apply_batch(
    conn: asyncpg.Connection,
    *,
    consumer: str,
    topic: str,
    events: Sequence[LogEvent],
    careful: bool = False,
    by_tenant: bool = False,
    deferred: frozenset[str] = frozenset(),
    budget_ms: int | None = None,
    on_dead_letters: OnDeadLetters | None = None,
    reads: asyncpg.Pool | None = None,
    budget_in_session: bool = False,
    elsewhere: frozenset[str] = frozenset(),
    homeless_here: bool = True,
    moves: bool = False,
) -> BatchResult:
    """Fold ``events`` (in log order per partition) and checkpoint them atomically.

    ``budget_ms`` bounds every statement and lock wait of the batch (set in the
    transaction, or with ``budget_in_session``, already set on ``conn``'s session
    by its owner: one round trip less per batch). With
    ``by_tenant``, each tenant gets a savepoint, and one that runs out of that
    budget is deferred (see :func:`apply_events`) instead of failing the batch.
    ``on_dead_letters`` runs inside the transaction, before the commit, with the
    dead letters of this batch (the processor sends them to the dead-letter topic).
    A connection of ``reads`` reads the tenants' current state ahead of the
    writes (see :func:`apply_events`). Events of tenants in ``elsewhere`` (placed on
    another database server) are passed over; the checkpoints still move past them, and
    so they do past events without a valid tenant unless ``homeless_here`` (they become
    dead letters on one server only: ``main``). With ``moves`` (tenants placed across
    servers), a tenant moving to or from this server is folded as its row in
    ``eventfold.tenant_homes`` says, read under the checkpoint locks (see
    :func:`moved_tenants`).
    """
    result = BatchResult()
    if not events:
        return result
    async with conn.transaction():
        if budget_ms is not None and not budget_in_session:
            await conn.execute(budget_sql(budget_ms, local=True))
        stored = await db.lock_checkpoints(
            conn, consumer, topic, sorted({e.partition for e in events})
        )
        fresh: list[LogEvent] = []
        for item in events:
            stored_next = stored.get(item.partition, 0)
            result.positions[item.partition] = max(
                result.positions.get(item.partition, stored_next), item.offset + 1
            )
            if item.offset < stored_next:
                result.duplicates += 1  # applied by an earlier batch (a redelivery)
            else:
                fresh.append(item)
        if moves and fresh:
            fresh, elsewhere, passed = await moved_tenants(conn, fresh, elsewhere)
            result.elsewhere += passed
        await apply_events(
            conn,
            consumer=consumer,
            items=fresh,
            result=result,
            careful=careful,
            by_tenant=by_tenant,
            deferred=deferred,
            reads=reads,
            budget_ms=budget_ms,
            topic=topic,
            elsewhere=elsewhere,
            homeless_here=homeless_here,
        )
        if result.dead_letters:
            await deadletters.put(conn, consumer, result.dead_letters)
            letters = [p for p in result.dead_letters if not p.deferred]
            if letters and on_dead_letters is not None:
                await on_dead_letters(letters)
        await db.save_checkpoints(
            conn,
            consumer,
            topic,
            result.positions,
            deferred={p.tenant for p in result.dead_letters if p.deferred},
        )
    return result


async def moved_tenants(
    conn: asyncpg.Connection, items: list[LogEvent], elsewhere: frozenset[str]
) -> tuple[list[LogEvent], frozenset[str], int]:
    """``items`` and ``elsewhere`` as this server's ``eventfold.tenant_homes`` has them:
    a tenant gone from here is elsewhere; a tenant leaving is still folded here (a
    process that has not read its new directory entry yet still reads it here, until
    its copy goes); a tenant that arrived is folded here, but for its events before the
    handover positions (its copy holds them). Also the number of events passed over.

    Read in the batch's transaction, after its checkpoint locks: a move's handover
    writes its row under the same locks (:mod:`eventfold.tenantmove`), so no batch
    folds a tenant on both sides of it.
    """
    tenants = {i.event.tenant for i in items if i.event is not None and i.event.tenant}
    rows = await conn.fetch(
        "SELECT tenant, state, since FROM eventfold.tenant_homes WHERE tenant = ANY($1::text[])",
        list(tenants),
    )
    if not rows:
        return items, elsewhere, 0
    gone = {r["tenant"] for r in rows if r["state"] == "gone"}
    arrived = {
        r["tenant"]: {int(p): int(o) for p, o in r["since"].items()}
        for r in rows
        if r["state"] == "live"
    }
    leaving = {r["tenant"] for r in rows if r["state"] == "leaving"}
    kept: list[LogEvent] = []
    for item in items:
        since = arrived.get(item.event.tenant) if item.event is not None else None
        if since is None or item.offset >= since.get(item.partition, 0):
            kept.append(item)
    here = (elsewhere | gone) - arrived.keys() - leaving
    return kept, frozenset(here), len(items) - len(kept)


async def apply_events(
    conn: asyncpg.Connection,
    *,
    consumer: str,
    items: Sequence[LogEvent],
    result: BatchResult,
    careful: bool = False,
    by_tenant: bool = False,
    deferred: frozenset[str] = frozenset(),
    honour_dead_letters: bool = True,
    reads: asyncpg.Pool | None = None,
    budget_ms: int | None = None,
    topic: str = "",
    elsewhere: frozenset[str] = frozenset(),
    homeless_here: bool = True,
) -> None:
    """Fold ``items`` into the tenant projections (the caller owns the transaction).

    Tenants in ``elsewhere`` are placed on another database server
    (:mod:`eventfold.placement`): their events are counted and left to it, and so are
    events without a valid tenant unless ``homeless_here``.

    Each tenant's events are folded into its live schema (``topic`` is where they
    come from). Events of a record holding dead letters are set aside behind
    them. In ``careful`` mode each event gets a savepoint, and an event that
    fails for any reason but a retriable one becomes a dead letter instead of
    failing the batch. With ``by_tenant``,
    each tenant gets a savepoint: a tenant too slow to write (a lock or
    statement timeout) has its events deferred, and so has every tenant in
    ``deferred``: they are retried in the background, in order, while the
    other tenants go on.

    With a ``reads`` pool (and neither ``careful`` nor ``by_tenant``), each
    tenant's records and known event ids are read on a connection of its own,
    ahead of the writes, while ``conn`` writes the tenants before: PostgreSQL
    reads and writes at once and the fold's Python runs during a read instead
    of after it. That connection sees only committed rows, which is all the
    state there is: the checkpoint rows, locked before this runs, fence every
    other writer of these partitions, and the previous batch has committed.
    Tenants whose schema this transaction creates are read on ``conn``, and so
    is a batch with one tenant to read (nothing to overlap: the small batches
    of live traffic take no extra round trips). The reads are bound by
    ``budget_ms`` as ``conn``'s statements are (a lock held too long fails the
    batch with the same error, so the processor isolates tenants alike). On
    that path the tenants' records and history are then written in one
    statement, and their workflow triggers in two (:func:`_write_folded`).
    """
    groups: dict[str, list[LogEvent]] = defaultdict(list)
    for item in items:
        ev = item.event
        if ev is None or ev.tenant is None or not is_valid("tenant", ev.tenant):
            if not homeless_here:
                result.elsewhere += 1
                continue
            result.dead_letters.append(_dead(item, "", "undecodable envelope or no valid tenant"))
            continue
        groups[ev.tenant].append(item)
    for tenant in elsewhere & groups.keys():
        result.elsewhere += len(groups.pop(tenant))
    for tenant in deferred & groups.keys():
        result.dead_letters += [
            _dead(i, tenant, f"deferred: tenant {tenant} is being retried", deferred=True)
            for i in groups.pop(tenant)
        ]
    if not groups:
        return
    registered, created, deleted = await _ensure_schemas(conn, list(groups))
    for tenant in deleted:
        # Events of a deleted tenant still in the log (other partitions, a late
        # producer): there is nothing to fold them into, now or ever.
        result.discarded += len(groups.pop(tenant))
    if not groups:
        return
    targets = {t: Target.live(t, topic) for t in groups}
    blocked: dict[tuple[str, str], deadletters.Blocker] = {}
    if honour_dead_letters:
        blocked = await deadletters.blocked_keys(
            conn,
            consumer,
            [
                (t, deadletters.order_key(i.event))
                for t, its in groups.items()
                for i in its
                if i.event
            ],
        )
    ahead = [t for t in groups if t not in created]
    # With one tenant there is nothing to overlap: its read on ``conn`` is one round
    # trip, on the reader three more (its transaction) on the way to a write.
    if reads is not None and not careful and not by_tenant and len(ahead) > 1:
        # Parsed once, for the read and for the fold.
        looked = {t: _lookups(its) for t, its in groups.items()}
        folded: list[Folded] = []
        async with _read_ahead(reads, {targets[t]: looked[t] for t in ahead}, budget_ms) as states:
            for tenant, tenant_items in groups.items():
                await fold_tenant(
                    conn,
                    targets[tenant],
                    tenant_items,
                    registered,
                    blocked,
                    result,
                    lookups=looked[tenant],
                    loaded=states.get(targets[tenant]),
                    folded=folded,
                )
        await _write_folded(conn, folded, result)
        return
    for tenant, tenant_items in groups.items():
        target = targets[tenant]
        if not by_tenant:
            await _apply_group(conn, target, tenant_items, registered, blocked, result, careful)
            continue
        step = BatchResult()
        known = set(registered)
        try:
            async with conn.transaction():
                await _apply_group(conn, target, tenant_items, registered, blocked, step, careful)
        except (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError) as exc:
            registered.clear()
            registered.update(known)
            step = BatchResult(deferred={tenant})
            step.dead_letters = [
                _dead(i, tenant, f"deferred: {type(exc).__name__}: {exc}", deferred=True)
                for i in tenant_items
            ]
        result.add(step)


async def _apply_group(
    conn: asyncpg.Connection,
    target: Target,
    items: list[LogEvent],
    registered: set[str],
    blocked: dict[tuple[str, str], deadletters.Blocker],
    result: BatchResult,
    careful: bool,
) -> None:
    tenant = target.tenant
    if not careful:
        await fold_tenant(conn, target, items, registered, blocked, result)
        return
    for item in items:
        step = BatchResult()
        known = set(registered)
        try:
            async with conn.transaction():  # a savepoint inside the batch
                await fold_tenant(conn, target, [item], registered, blocked, step)
        except Exception as exc:
            if is_retriable(exc):
                raise
            registered.clear()
            registered.update(known)
            assert item.event is not None
            blocked[(tenant, deadletters.order_key(item.event))] = deadletters.Blocker(
                item.event.id, deferred=False
            )
            step = BatchResult(dead_letters=[_dead(item, tenant, f"{type(exc).__name__}: {exc}")])
        result.add(step)


def _dead(
    item: LogEvent, tenant: str, error: str, behind: str | None = None, *, deferred: bool = False
) -> DeadLetter:
    ev = item.event
    logged = item.logged
    raw = logged if logged is not None else (ev.to_json() if ev is not None else b"")
    return DeadLetter(
        partition=item.partition,
        offset=item.offset,
        tenant=tenant,
        key=deadletters.order_key(ev)
        if ev is not None
        else f"offset:{item.partition}:{item.offset}",
        raw=raw,
        error=error[:2000],
        event_id=ev.id if ev is not None else None,
        event_type=ev.type if ev is not None else None,
        behind=behind,
        deferred=deferred,
    )


async def _ensure_schemas(
    conn: asyncpg.Connection, tenants: list[str]
) -> tuple[set[str], set[str], set[str]]:
    """Create missing tenant schemas; return the registered tenants, those created, and
    the deleted ones (whose events are folded no more: nothing of theirs comes back).

    Record events of a tenant can reach the projector before its
    ``tenant.created`` (they sit on other partitions, and a replay reads
    partitions at different speeds), so the schema comes with the first event
    of any type; the tenant becomes visible when ``tenant.created`` registers it.
    """
    status, deleted = await readmodel.tenant_status(conn, tenants)
    missing = [t for t in tenants if t not in status and t not in deleted]
    # Two processors creating one schema at once would collide in pg_namespace, so
    # each takes the tenant's lock; in one order for all, or two processors whose
    # batches meet the same new tenants in different orders deadlock (seen with two
    # projector processes catching up on one topic).
    for tenant in sorted(missing):
        await tenant_lock(conn, tenant)
        await conn.execute(readmodel.tenant_ddl(tenant))
    registered = {t for t, known in status.items() if known}
    if missing:
        registered |= await readmodel.existing_tenants(conn, missing)
    return registered, set(missing), deleted


#: Each item's record key (None for other types or a bad subject), and the event ids.
Lookups = tuple[list[tuple[str, str] | None], list[str]]


def _lookups(items: Sequence[LogEvent]) -> Lookups:
    """Each item's record key (None for other types or a bad subject), and its event ids."""
    keys = [
        _record_key(i.event.subject or "")
        if i.event is not None
        and (i.event.type in RECORD_TYPES or i.event.type == ERASED or is_custom(i.event.type))
        else None
        for i in items
    ]
    return keys, [i.event.id for i in items if i.event]


async def _load(
    conn: asyncpg.Connection,
    schema: str,
    ids: list[str],
    keys: list[tuple[str, str] | None],
) -> readmodel.TenantState:
    wanted = list(dict.fromkeys(k for k in keys if k is not None))
    return await readmodel.load_state(conn, schema, ids, wanted)


@contextlib.asynccontextmanager
async def _read_ahead(
    reads: asyncpg.Pool, groups: dict[Target, Lookups], budget_ms: int | None
) -> AsyncIterator[dict[Target, asyncio.Future[readmodel.TenantState]]]:
    """Load each tenant's state on a connection of ``reads``, one after another, as futures.

    The reads run in a read-only transaction of their own, each statement and
    lock wait bound by ``budget_ms``; the connection goes back to the pool as
    soon as they are done, while the writes go on. A failed read fails its
    tenant's future and every one after it (the caller's batch fails on the
    first it awaits, as if it had read it itself); leaving the block on an
    error stops the reads.
    """
    loop = asyncio.get_running_loop()
    states = {t: loop.create_future() for t in groups}

    async def read_all() -> None:
        try:
            async with reads.acquire(timeout=10) as reader, reader.transaction(readonly=True):
                if budget_ms is not None:
                    await reader.execute(budget_sql(budget_ms, local=True))
                for target, (keys, ids) in groups.items():
                    states[target].set_result(await _load(reader, target.schema, ids, keys))
        except Exception as exc:
            for future in states.values():
                if not future.done():
                    future.set_exception(exc)

    task = asyncio.create_task(read_all(), name="projector-read-state")
    try:
        yield states
    except BaseException:
        task.cancel()  # the batch failed: stop reading
        raise
    finally:
        # After a batch that went through, the reads are over: only their commit
        # and the connection's release may be left, not worth interrupting.
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for future in states.values():
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a read the batch never awaited is no error
            else:
                future.cancel()


@dataclass(slots=True)
class Folded:
    """One tenant's fold whose records, history and triggers are still to be written."""

    target: Target
    changed: dict[tuple[str, str], tuple[Record, str]]
    history: list[readmodel.HistoryRow]
    #: Per history row: whether it goes to the live streams, whether it has a ``status``.
    pushed: list[tuple[bool, bool]]
    triggered: list[workflows.Change]


async def _write_folded(
    conn: asyncpg.Connection, folded: Sequence[Folded], result: BatchResult
) -> None:
    """Write the folds of tenants (one, or a batch's): their records and history in one
    statement, their workflow triggers in two (:func:`readmodel.save_many`,
    :func:`workflows.enqueue_many`); their applied events go to ``result.live``."""
    seqs = await readmodel.save_many(
        conn, [(f.target.schema, f.changed, f.history) for f in folded]
    )
    await workflows.enqueue_many(conn, [(f.target, f.triggered) for f in folded])
    for f, tenant_seqs in zip(folded, seqs, strict=True):
        result.live += [
            LiveEvent(f.target.tenant, tenant_seqs[row.id], row.type, row.envelope, has_status)
            for row, (live, has_status) in zip(f.history, f.pushed, strict=True)
            if live and row.id in tenant_seqs
        ]


async def fold_tenant(
    conn: asyncpg.Connection,
    target: Target,
    items: list[LogEvent],
    registered: set[str],
    blocked: dict[tuple[str, str], deadletters.Blocker],
    result: BatchResult,
    *,
    lookups: Lookups | None = None,
    loaded: Awaitable[readmodel.TenantState] | None = None,
    folded: list[Folded] | None = None,
) -> None:
    """Fold one tenant's decoded ``items`` into ``target`` (the caller's transaction).

    ``registered`` holds the tenants whose ``tenant.created`` is applied (grown
    by this fold); ``blocked`` the record keys holding dead letters, behind
    which an event is set aside. The counts, dead letters and live events go to
    ``result``. A rebuild calls it directly with a shadow target. With ``folded``,
    the records, history and workflow triggers are not written here but added
    to it, for the batch to write with the other tenants' (:func:`_write_folded`).
    """
    tenant = target.tenant
    items = await _opened(conn, tenant, items)
    keys, ids = lookups if lookups is not None else _lookups(items)
    state_now = await (loaded if loaded is not None else _load(conn, target.schema, ids, keys))
    await workflows.begin_batch(conn, target, [i.event for i in items])
    seen = state_now.seen
    state: dict[tuple[str, str], Record | None] = dict(state_now.records)
    changed: dict[tuple[str, str], tuple[Record, str]] = {}
    history: list[readmodel.HistoryRow] = []
    #: Per history row: whether it goes to the live streams (applied, and not a
    #: replay's re-application), and whether its envelope has a ``status`` extension.
    pushed: list[tuple[bool, bool]] = []
    #: Applied record events with their record right after them (workflow triggers).
    triggered: list[workflows.Change] = []
    for n, (item, key) in enumerate(zip(items, keys, strict=True)):
        ev = item.event
        assert ev is not None  # filtered by apply_events
        if ev.id in seen:
            result.duplicates += 1
            continue
        blocker = blocked.get((tenant, deadletters.order_key(ev)))
        if blocker is not None:
            result.dead_letters.append(
                _dead(
                    item,
                    tenant,
                    f"waiting behind dead letter {blocker.event_id}",
                    blocker.event_id,
                    deferred=blocker.deferred,
                )
            )
            continue
        seen.add(ev.id)
        at = ev.time or datetime.fromtimestamp(item.timestamp_ms / 1000, UTC)
        outcome = await _apply_one(conn, target, ev, key, at, registered, state, changed)
        if ev.type == ERASED and outcome.status == "applied" and ev.subject is not None:
            # This batch's history of the record is not written yet: it goes without data too.
            history = [h if h.subject != ev.subject else _without_data(h) for h in history]
        if ev.type == "tenant.deleted" and outcome.status == "applied" and not target.shadow:
            # The tenant is gone: its schema (with this batch's history of it) goes
            # now, and its events after this one are folded into nothing.
            await tenants.forget_tenant(conn, tenant)
            registered.discard(tenant)
            result.deleted.add(tenant)
            result.applied += 1
            result.discarded += len(items) - n - 1
            return
        if outcome.status == "applied":
            result.applied += 1
            if key is not None and (ev.type in RECORD_TYPES or is_custom(ev.type)):
                triggered.append((ev, key, state.get(key)))
        else:
            result.rejected += 1
        if result.newest_event_time is None or at > result.newest_event_time:
            result.newest_event_time = at
        history.append(
            readmodel.HistoryRow(
                id=ev.id,
                type=ev.type,
                subject=ev.subject,
                time=at,
                status=outcome.status,
                reason=outcome.reason,
                partition=item.partition,
                offset=item.offset,
                envelope=item.raw.decode()
                if item.raw is not None and ev.time is not None
                else ev.to_json().decode(),
            )
        )
        extra = ev.model_extra or {}
        pushed.append((outcome.status == "applied" and not is_replay(ev), "status" in extra))
    await workflows.end_runs(conn, target)
    done = Folded(target, changed, history, pushed, triggered)
    if folded is None:
        await _write_folded(conn, [done], result)
    else:
        folded.append(done)


async def _apply_one(
    conn: asyncpg.Connection,
    target: Target,
    ev: CloudEvent,
    key: tuple[str, str] | None,
    at: datetime,
    registered: set[str],
    state: dict[tuple[str, str], Record | None],
    changed: dict[tuple[str, str], tuple[Record, str]],
) -> Outcome:
    tenant = target.tenant
    if ev.type == "tenant.created":
        data: dict[str, Any] = ev.data if isinstance(ev.data, dict) else {}
        if tenant in registered:
            return Outcome("rejected", f"tenant {tenant} exists already")
        if data.get("id") != tenant:
            return Outcome("rejected", "tenant.created data.id differs from the event's tenant")
        await readmodel.create_tenant(
            conn,
            tenant=tenant,
            schema=target.schema,
            name=str(data.get("name") or tenant),
            limits=dict(data.get("limits") or {}),
            created_at=at,
            event_id=ev.id,
        )
        registered.add(tenant)
        return Outcome("applied")
    if ev.type == ERASED:
        return await _erase(conn, target, ev, key, at, state, changed)
    record_type, payload = ev.type, ev.data
    if ev.type not in RECORD_TYPES and is_custom(ev.type):
        # A tenant type projected into a record folds as the record event it stands for.
        op = await eventtypes.record_operation(conn, tenant, ev)
        if op is None or isinstance(op, Outcome):
            return op or Outcome("applied")
        record_type, payload = op.event_type, op.data
        if (op.collection, op.record_id) != key:
            key = (op.collection, op.record_id)
            if key not in state:  # not among the batch's keys read ahead (its subject differs)
                loaded = await readmodel.load_state(conn, target.schema, [], [key])
                state[key] = loaded.records.get(key)
    if record_type in RECORD_TYPES:
        if key is None:
            return Outcome("rejected", "subject must be {collection}/{id}")
        new, outcome = apply(
            state.get(key), record_type, payload, at=at, expected_version=ev.expectedversion
        )
        if outcome.status == "applied" and new is not None:
            state[key] = new
            changed[key] = (new, ev.id)
        return outcome
    handler = HANDLERS.get(ev.type)
    if handler is not None:
        return await handler(conn, target, ev, at)
    # Types with no projection of their own are kept in the history only.
    return Outcome("applied")


async def _opened(conn: asyncpg.Connection, tenant: str, items: list[LogEvent]) -> list[LogEvent]:
    """``items`` with encrypted data opened, or left out where the record was erased
    (:mod:`eventfold.datakeys`); the history keeps what is folded.

    Items opened when they were read (:func:`read_events`) keep their data while their
    key is live: one destroyed since (an erasure folded in between) leaves it out.
    """
    sealed: list[tuple[int, CloudEvent]] = []
    read_open: list[tuple[int, CloudEvent, str]] = []
    for n, item in enumerate(items):
        ev = item.event
        key_id = (ev.model_extra or {}).get(datakeys.KEY_EXTENSION) if ev is not None else None
        if ev is None or key_id is None:
            continue
        if item.sealed is None:
            sealed.append((n, ev))
        else:
            read_open.append((n, ev, str(key_id)))
    if not sealed and not read_open:
        return items
    cache = datakeys.cache()
    out = list(items)
    if sealed:
        opened = await cache.open_all(conn, tenant, [(ev, items[n].raw) for n, ev in sealed])
        for (n, _), (ev, raw) in zip(sealed, opened, strict=True):
            out[n] = _with(items[n], ev, raw, items[n].raw)
    if read_open:
        await cache.load(conn, tenant, {key_id for _, _, key_id in read_open})
        for n, ev, key_id in read_open:
            if cache.get(key_id) is None:
                out[n] = _with(items[n], datakeys.erased(ev), None, items[n].sealed)
    return out


def _with(item: LogEvent, event: CloudEvent, raw: bytes | None, sealed: bytes | None) -> LogEvent:
    # Built directly: dataclasses.replace costs a microsecond per event more.
    return LogEvent(item.partition, item.offset, item.timestamp_ms, event, raw, sealed)


async def _erase(
    conn: asyncpg.Connection,
    target: Target,
    ev: CloudEvent,
    key: tuple[str, str] | None,
    at: datetime,
    state: dict[tuple[str, str], Record | None],
    changed: dict[tuple[str, str], tuple[Record, str]],
) -> Outcome:
    """``record.erased``: the record becomes a tombstone without data (a version up, so a
    cached copy is replaced), its history and its webhook deliveries lose their data."""
    if key is None or ev.subject is None:
        return Outcome("rejected", "subject must be {collection}/{id}")
    record = state.get(key)
    if record is not None:
        gone = Record(record.version + 1, None, record.created_at, at)
        state[key] = gone
        changed[key] = (gone, ev.id)
    # What comes after this in the log reads the record's keys again (destroyed), as a
    # replay does: a process that still held them would fold it otherwise.
    datakeys.cache().forget(target.tenant, ev.subject)
    await readmodel.erase_history_data(conn, target.schema, ev.subject)
    if not target.shadow:
        await webhooks.erase_delivery_data(conn, target.tenant, ev.subject)
    return Outcome("applied")


def _without_data(row: readmodel.HistoryRow) -> readmodel.HistoryRow:
    doc = orjson.loads(row.envelope)
    return dataclasses.replace(row, envelope=orjson.dumps(datakeys.strip_data(doc)).decode())


@lru_cache(maxsize=16_384)
def _record_key(subject: str) -> tuple[str, str] | None:
    # Cached: writes cluster on hot records, and the identifier checks are regexes.
    collection, sep, record_id = subject.partition("/")
    if sep and is_valid("collection", collection) and is_valid("id", record_id):
        return collection, record_id
    return None
