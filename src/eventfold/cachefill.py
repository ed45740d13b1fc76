"""Cache entries from what PostgreSQL committed: after a batch, after a redrive, after a swap.

The cache processor refreshes the records each batch changed once the
projector has committed it; a redrive (``eventfold dlq redrive``, the API's
``…/dead-letters/redrive``) refreshes the records it just applied, so a read
right after it sees them. Both read the committed rows through the read model
and write guarded entries (:class:`~eventfold.cache.RecordCache`: the newest
version wins). A record holding dead letters is *held* instead (an entry above
every version, read as a miss): its events are applied later, by a redrive the
cache processor does not see, so its reads go to PostgreSQL meanwhile. A
rebuild's swap drops the tenant's entries (:func:`forget_tenants`): they refill
from the new schema.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import asyncpg
from redis.asyncio import Redis

from eventfold import deadletters, readmodel
from eventfold.cache import (
    HOLD_VERSION,
    HOT_TENANTS_KEY,
    Entry,
    RecordCache,
    cache_client,
    record_key,
    record_payload,
)
from eventfold.clients import redis_client
from eventfold.faults import is_retriable
from eventfold.ids import is_valid
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from eventfold.tenancy import DELETED_TENANTS_KEY, tenant_connection

log = logging.getLogger("eventfold.cache")

#: ``(collection, id)`` of a record.
Key = tuple[str, str]


def split_key(text: bytes | str) -> Key | None:
    """``(collection, id)`` of ``collection/id`` when both are valid identifiers."""
    value = text.decode() if isinstance(text, bytes) else text
    collection, sep, record_id = value.partition("/")
    if sep and is_valid("collection", collection) and is_valid("id", record_id):
        return collection, record_id
    return None


async def committed_entries(pool: asyncpg.Pool, tenant: str, keys: Sequence[Key]) -> list[Entry]:
    """The committed rows of ``keys`` as guarded cache writes (absent keys: none)."""
    try:
        async with tenant_connection(pool, tenant) as conn:
            rows = await readmodel.committed_records(conn, tenant, keys)
    except (asyncpg.InvalidSchemaNameError, asyncpg.UndefinedTableError):
        return []  # a tenant with no projection (yet): nothing to cache
    return [
        Entry(record_key(tenant, r["collection"], r["id"]), r["version"], record_payload(r))
        for r in rows
    ]


async def held_keys(
    pool: asyncpg.Pool, projector: str, tenant: str, keys: Sequence[Key]
) -> set[Key]:
    """Which of ``keys`` hold dead letters of ``projector`` (applied later by a redrive)."""
    async with pool.acquire(timeout=5) as conn:
        held = await deadletters.held_keys(conn, projector, tenant, [f"{c}/{i}" for c, i in keys])
    return {key for key in (split_key(k) for k in held) if key is not None}


async def refresh(
    pool: asyncpg.Pool,
    cache: RecordCache,
    projector: str,
    keys: Mapping[str, Iterable[Key]],
) -> tuple[int, dict[str, set[Key]]]:
    """Write the committed state of ``keys`` (per tenant) to the cache, holding the records
    with dead letters; the entries written, and the held keys per tenant."""
    entries: list[Entry] = []
    held_by_tenant: dict[str, set[Key]] = {}
    for tenant, tenant_keys in keys.items():
        wanted = sorted(set(tenant_keys))
        if not wanted:
            continue
        held = await held_keys(pool, projector, tenant, wanted)
        holds = {record_key(tenant, c, i) for c, i in held}
        entries += [e for e in await committed_entries(pool, tenant, wanted) if e.key not in holds]
        entries += [Entry(k, HOLD_VERSION, None, hold=True) for k in sorted(holds)]
        if held:
            held_by_tenant[tenant] = held
    return await cache.put_many(entries), held_by_tenant


async def refresh_after_redrive(
    settings: Settings, pool: asyncpg.Pool, keys: Iterable[Mapping[str, object]]
) -> int:
    """Refresh the entries of records a redrive just applied.

    ``keys`` are the redrive report's ``{"tenant", "key": "collection/id"}``. The
    cache processor would refresh them within seconds; doing it here makes a read
    right after the redrive see it. Best effort: a failure only delays the refresh.
    Returns the entries written.
    """
    wanted: dict[str, set[Key]] = defaultdict(set)
    for k in keys:
        parsed = split_key(str(k.get("key", "")))
        tenant = str(k.get("tenant", ""))
        if parsed is not None and is_valid("tenant", tenant):
            wanted[tenant].add(parsed)
    if not wanted:
        return 0
    cache = RecordCache.from_settings(settings, Metrics())
    projector = f"{settings.consumer_group_prefix}.projector"
    try:
        written, _ = await refresh(pool, cache, projector, wanted)
        return written
    except Exception as exc:
        if not is_retriable(exc):
            raise
        log.warning("cache not refreshed after the redrive", extra={"error": repr(exc)})
        return 0
    finally:
        await cache.close()


async def forget_tenants(settings: Settings, tenants: set[str]) -> None:
    """Drop the tenants' cached records: the next read fills them from the new schema.

    One pass over the keyspace for all of them: a SCAN visits every key whatever
    its pattern, so a pass per tenant cost tenants x keys (with a few hundred
    thousand keys in Redis, 20 of the 24 s of a 50-tenant rebuild).
    """
    if tenants:
        one = next(iter(tenants)) if len(tenants) == 1 else "*"
        client = cache_client(settings)
        try:
            await _unlink(client, record_key(one, "*", "*"), tenants)
        finally:
            await client.aclose()


async def purge_tenants(settings: Settings, tenants: set[str]) -> None:
    """Drop every key of deleted tenants: cached records and hot keys in the cache's
    Redis; analytics windows, rate limit buckets, stream slots and dedup memory in
    the state's (all of them live under ``ef:<tenant>:``).

    Each Redis first records the tenants in :data:`DELETED_TENANTS_KEY`, which the
    writers that may lag behind the deletion check atomically with their writes.
    """
    if not tenants:
        return
    one = next(iter(tenants)) if len(tenants) == 1 else "*"
    for client in (cache_client(settings), redis_client(settings)):
        try:
            # Marked first: a lagging writer's next write sees it (and writes nothing).
            await client.sadd(DELETED_TENANTS_KEY, *sorted(tenants))
            await _unlink(client, f"ef:{one}:*", tenants)
        finally:
            await client.aclose()
    client = cache_client(settings)
    try:
        await client.zrem(HOT_TENANTS_KEY, *sorted(tenants))
    finally:
        await client.aclose()


async def _unlink(client: Redis, pattern: str, tenants: set[str]) -> None:
    """Unlink the keys matching ``pattern`` whose tenant (second field) is in ``tenants``."""
    # Tenant ids hold no ':' (validated), so a key's tenant is its second field.
    wanted = {t.encode() for t in tenants}
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        if key.split(b":", 2)[1] not in wanted:
            continue
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)
