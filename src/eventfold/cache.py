"""The Redis record cache: version-guarded entries, a circuit breaker, hot-key tracking.

One entry per record, ``ef:{tenant}:rec:{collection}:{id}``, holding
``b"<version>|<record JSON>"`` (the exact body ``GET …/records/{id}`` answers)
or, for a deleted record, the tombstone ``b"<version>|"``. Every write goes
through one Lua script that stores the value only when the stored version is
lower, so of two writers racing (the cache processor refreshing a committed
change, a read filling a miss with what it read a moment earlier) the newer
version always wins, and a tombstone keeps a late fill from resurrecting a
deleted record. Versions only grow (deleted records keep counting), which is
what makes "higher wins" correct.

Reads never wait on a sick Redis for long: every call has a short deadline,
and a :class:`~eventfold.breaker.Breaker` stops calling Redis after a few consecutive failures,
sending reads straight to PostgreSQL until a probe after the cooldown works.

:class:`HotKeys` counts reads per tenant in a bounded in-process summary and
flushes it to a decaying Redis sorted set ``ef:{tenant}:hot``, which feeds
cache warming and ``GET /v1/tenants/{t}/hot-keys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from eventfold.breaker import CLOSED, Breaker
from eventfold.clients import open_redis
from eventfold.errors import RetriableError, Unavailable
from eventfold.metrics import Metrics
from eventfold.redispipe import AutoPipeline
from eventfold.settings import Settings
from eventfold.tenancy import DELETED_TENANTS_KEY

log = logging.getLogger("eventfold.cache")

#: A deleted record's tombstone outlives any read that could still fill an older
#: version (requests end within their 20 s deadline) by a wide margin.
TOMBSTONE_TTL_SECONDS = 600
#: Hot-key summary: entries kept per tenant in process, and members in Redis.
HOT_CAPACITY = 256
HOT_STORED = 1000
#: How often a process flushes its counts, and the half-life of a count in Redis.
HOT_FLUSH_SECONDS = 5.0
HOT_HALF_LIFE_SECONDS = 300.0
HOT_TTL_SECONDS = 7 * 24 * 3600
#: Tenants tracked between two flushes at most (memory stays bounded).
HOT_MAX_TENANTS = 10_000

#: The version of a *hold*: above every real version, so no fill can replace it, and
#: read as a miss. The cache processor holds records with dead letters (a redrive
#: applies it later, out of its sight) so their reads go to PostgreSQL meanwhile.
HOLD_VERSION = 2**53 - 1

#: KEYS[1] the entry; ARGV: version, payload ("" = tombstone), ttl seconds, and "1"
#: when the cache processor writes (it may replace a hold, a fill may not). Stores
#: ``version|payload`` only when no entry holds this version or a newer one.
_PUT_SCRIPT = f"""
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[1]) and not (ARGV[4] == '1' and v == {HOLD_VERSION}) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""

#: KEYS[1] the sorted set, KEYS[2] its last decay time, KEYS[3] the platform's set of
#: tenants by last read; ARGV: half-life, max members, ttl, tenant, then member/count
#: pairs. Scores decay by elapsed time (Redis's clock), so many API processes
#: flushing into one set do not decay it faster.
_HOT_SCRIPT = """
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local last = tonumber(redis.call('GET', KEYS[2]) or now)
local factor = math.pow(0.5, (now - last) / tonumber(ARGV[1]))
if factor < 0.999 then
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local s = tonumber(all[i + 1]) * factor
    if s < 0.01 then
      redis.call('ZREM', KEYS[1], all[i])
    else
      redis.call('ZADD', KEYS[1], s, all[i])
    end
  end
  redis.call('SET', KEYS[2], tostring(now), 'EX', tonumber(ARGV[3]))
elseif not redis.call('GET', KEYS[2]) then
  redis.call('SET', KEYS[2], tostring(now), 'EX', tonumber(ARGV[3]))
end
for i = 5, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[1], ARGV[i + 1], ARGV[i])
end
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[2])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
redis.call('ZADD', KEYS[3], now, ARGV[4])
local tenants = redis.call('ZCARD', KEYS[3])
if tenants > 10000 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, tenants - 10001) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return n
"""

#: What reads do while the cache's breaker is open.
_FALLBACK = "reads go to PostgreSQL"
#: Failures that count against the breaker: an outage or a slow Redis, not a bug.
_FAILURES = (RedisError, OSError, TimeoutError)


def record_key(tenant: str, collection: str, record_id: str) -> str:
    """The Redis key of one record (identifiers validated by the caller)."""
    return f"ef:{tenant}:rec:{collection}:{record_id}"


def hot_key(tenant: str) -> str:
    """The Redis sorted set of a tenant's most read records."""
    return f"ef:{tenant}:hot"


#: Tenants by the time of their last flushed read (warming starts with the most recent).
#: ``_`` cannot start a tenant id, so this key is in no tenant's namespace.
HOT_TENANTS_KEY = "ef:_platform:hot-tenants"


def record_document(row: Any) -> dict[str, Any]:
    """The record resource of ``GET …/records/{id}`` from a ``records`` row."""
    return {
        "id": row["id"],
        "collection": row["collection"],
        "version": row["version"],
        "data": row["data"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def record_payload(row: Any) -> bytes | None:
    """What the cache stores for a row: its JSON body, or None (a tombstone) when deleted."""
    return None if row["deleted"] else orjson.dumps(record_document(row))


@dataclass(frozen=True, slots=True)
class Cached:
    """A cache entry: the record's version and body, or ``body=None`` for a deleted record."""

    version: int
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One write of the cache processor: ``body=None`` stores a tombstone.

    ``hold`` stores a hold instead (see :data:`HOLD_VERSION`), whatever the entry is.
    """

    key: str
    version: int
    body: bytes | None
    hold: bool = False


def decode_entry(raw: bytes) -> Cached | None:
    """Parse a stored ``version|payload``; None for anything else (treated as a miss)."""
    head, sep, body = raw.partition(b"|")
    if not sep or not head.isdigit():
        return None
    return Cached(int(head), body or None)


@dataclass(slots=True)
class HotKeys:
    """Approximate top-N read counts per tenant (Misra-Gries), cheap enough for every read.

    Each tenant keeps at most ``2 * capacity`` counters; when that fills, every
    counter is lowered by the ``capacity``-th largest and the ones at zero are
    dropped, which keeps the heavy hitters and costs O(log capacity) amortised
    per read. :meth:`drain` hands the counts over (to a flush) and starts afresh.
    """

    capacity: int = HOT_CAPACITY
    max_tenants: int = HOT_MAX_TENANTS
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, tenant: str, member: str) -> None:
        """Count one read of ``member`` (``collection/id``) of ``tenant``."""
        per = self.counts.get(tenant)
        if per is None:
            if len(self.counts) >= self.max_tenants:
                return  # bounded: a flush makes room again
            per = self.counts[tenant] = {}
        per[member] = per.get(member, 0) + 1
        if len(per) > 2 * self.capacity:
            cut = sorted(per.values(), reverse=True)[self.capacity]
            self.counts[tenant] = {m: c - cut for m, c in per.items() if c > cut}

    def drain(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """Take the counts of every tenant (or of ``tenant``) out of the summary."""
        if tenant is not None:
            per = self.counts.pop(tenant, None)
            return {tenant: per} if per else {}
        out, self.counts = self.counts, {}
        return out


def cache_client(settings: Settings) -> Redis:
    """A Redis client for the cache: short socket deadlines and no retries.

    It talks to the cache's own server or database (``settings.cache_url``), apart
    from the state that must not vanish, so evicting entries never evicts that.
    The breaker, not a retry, handles a failing Redis: a read waits at most one
    deadline before going to PostgreSQL.
    """
    timeout = settings.cache_timeout_ms / 1000
    return open_redis(
        settings,
        settings.cache_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=256,
    )


class RecordCache:
    """Guarded reads and writes of record entries through a breaker, and hot-key counts."""

    def __init__(
        self,
        redis: Redis,
        metrics: Metrics,
        *,
        enabled: bool = True,
        ttl: int = 3600,
        timeout: float = 0.25,
        breaker: Breaker | None = None,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.enabled = enabled
        self.ttl = ttl
        self.timeout = timeout
        self.breaker = breaker or Breaker(name="cache", fallback=_FALLBACK)
        self.breaker.on_change = self._breaker_changed
        metrics.cache_breaker_state.set(self.breaker.state)
        self.hot = HotKeys()
        self._gets = AutoPipeline.shared(redis)
        self._put = redis.register_script(_PUT_SCRIPT)
        self._hot = redis.register_script(_HOT_SCRIPT)
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> RecordCache:
        """A cache with its own short-deadline client, configured from ``settings``."""
        return cls(
            cache_client(settings),
            metrics,
            enabled=settings.cache_enabled,
            ttl=settings.cache_ttl_seconds,
            timeout=settings.cache_timeout_ms / 1000,
            breaker=Breaker(
                failures=settings.cache_breaker_failures,
                cooldown=settings.cache_breaker_cooldown_seconds,
                name="cache",
                fallback=_FALLBACK,
            ),
        )

    def _breaker_changed(self, state: int) -> None:
        self.metrics.cache_breaker_state.set(state)

    # -- reads ---------------------------------------------------------------

    async def get(self, tenant: str, collection: str, record_id: str) -> Cached | None:
        """The cached entry, or None on a miss, when disabled, or when Redis is unavailable."""
        if not self.enabled or not self.breaker.allow():
            self.metrics.cache_misses.labels("get").inc()
            return None
        started = time.perf_counter()
        try:
            key = record_key(tenant, collection, record_id)
            # Concurrent reads' GETs share one round trip (see eventfold.redispipe).
            raw = cast(bytes | None, await self._gets.execute("GET", key, timeout=self.timeout))
        except _FAILURES as exc:
            self._failed("get", exc)
            self.metrics.cache_misses.labels("get").inc()
            return None
        self.breaker.success()
        self.metrics.cache_latency.labels("get").observe(time.perf_counter() - started)
        entry = decode_entry(raw) if raw else None
        if entry is not None and entry.version == HOLD_VERSION:
            entry = None  # held: PostgreSQL knows better until the redrive
        (self.metrics.cache_hits if entry else self.metrics.cache_misses).labels("get").inc()
        return entry

    async def fill(
        self, tenant: str, collection: str, record_id: str, version: int, body: bytes | None
    ) -> bool:
        """Store what a read found in PostgreSQL, unless a newer version is cached already.

        Best effort: False when not stored (older than the entry, or Redis unavailable).
        """
        if not self.enabled or not self.breaker.allow():
            return False
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                stored = await self._store(
                    Entry(record_key(tenant, collection, record_id), version, body), fill=True
                )
        except _FAILURES as exc:
            self._failed("fill", exc)
            return False
        self.breaker.success()
        self.metrics.cache_latency.labels("fill").observe(time.perf_counter() - started)
        return bool(stored)

    # -- writes of the cache processor ----------------------------------------

    async def put_many(self, entries: Sequence[Entry], *, within: float = 5.0) -> int:
        """Store ``entries`` (guarded) in one pipeline; how many were newer than the cache.

        Raises on failure: the cache processor must retry its batch, not skip it.
        Bypasses the breaker (a processor has no PostgreSQL path to fall back to).
        """
        if not entries:
            return 0
        started = time.perf_counter()
        async with asyncio.timeout(within):
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in entries:
                    if e.hold:
                        pipe.set(e.key, f"{HOLD_VERSION}|", ex=self.ttl)
                    else:
                        await self._store(e, client=pipe)
                results = await pipe.execute()
        self.metrics.cache_latency.labels("refresh").observe(time.perf_counter() - started)
        return sum(1 for r in results if r)

    async def _store(self, entry: Entry, client: Any = None, *, fill: bool = False) -> Any:
        ttl = self.ttl if entry.body is not None else TOMBSTONE_TTL_SECONDS
        return await self._put(
            keys=[entry.key],
            args=[entry.version, entry.body or b"", ttl, "0" if fill else "1"],
            client=client,
        )

    # -- hot keys -------------------------------------------------------------

    def track(self, tenant: str, collection: str, record_id: str) -> None:
        """Count one read of a record (in process; flushed to Redis periodically)."""
        self.hot.add(tenant, f"{collection}/{record_id}")

    async def flush_hot(self, tenant: str | None = None) -> None:
        """Add the counts gathered so far into each tenant's decaying sorted set."""
        drained = self.hot.drain(tenant)
        if not drained or not self.breaker.allow():
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for t, counts in drained.items():
                        args: list[Any] = [HOT_HALF_LIFE_SECONDS, HOT_STORED, HOT_TTL_SECONDS, t]
                        for member, count in counts.items():
                            args += [member, count]
                        keys = [hot_key(t), hot_key(t) + ":at", HOT_TENANTS_KEY,
                                DELETED_TENANTS_KEY]  # fmt: skip
                        await self._hot(keys=keys, args=args, client=pipe)
                    await pipe.execute()
        except _FAILURES as exc:
            self._failed("hot-keys", exc)  # counts of this interval are lost: they are a hint
            return
        self.breaker.success()
        self.metrics.cache_latency.labels("hot-keys").observe(time.perf_counter() - started)

    async def top(self, tenant: str, limit: int) -> list[tuple[str, str, float]]:
        """``(collection, id, score)`` of a tenant's most read records, hottest first.

        Raises :class:`~eventfold.errors.Unavailable` when Redis is not answering.
        """
        await self.flush_hot(tenant)
        if not self.breaker.allow():
            raise Unavailable("the cache is unavailable; retry shortly", retry_after=2)
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                rows = cast(
                    list[tuple[bytes, float]],
                    await self.redis.zrevrange(hot_key(tenant), 0, limit - 1, withscores=True),
                )
        except _FAILURES as exc:
            self._failed("hot-keys", exc)
            raise Unavailable("the cache is unavailable; retry shortly", retry_after=2) from exc
        self.breaker.success()
        return list(_split_members(rows))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(HOT_FLUSH_SECONDS)
            try:
                await self.flush_hot()
            except Exception:  # the flusher must outlive any failure; counts are a hint
                log.exception("hot-key flush failed")

    def start(self) -> None:
        """Start flushing hot-key counts in the background."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="hot-key-flush")

    async def close(self) -> None:
        """Stop the flusher (flushing once more) and close the client."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
            with contextlib.suppress(Exception):
                await self.flush_hot()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), 5)

    # -- health ---------------------------------------------------------------

    async def check(self) -> None:
        """Readiness: raises while the breaker is open (the process is then ``degraded``).

        When the cooldown is over, this check is the probe: a breaker closes
        again without waiting for read traffic.
        """
        if not self.enabled:
            return
        if self.breaker.allow():
            try:
                async with asyncio.timeout(self.timeout):
                    await self.redis.ping()
            except _FAILURES as exc:
                self._failed("ping", exc)
            else:
                self.breaker.success()
        if self.breaker.state != CLOSED:
            raise CacheBreakerOpen(f"cache breaker {self.breaker.state_name}")

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.breaker.failure(exc)
        self.metrics.dependency_errors.labels("redis").inc()
        log.debug("cache call failed", extra={"operation": operation, "error": repr(exc)})


class CacheBreakerOpen(RetriableError):
    """Reported by the readiness check while the cache reads from PostgreSQL only."""


def _split_members(rows: Iterable[tuple[bytes, float]]) -> Iterable[tuple[str, str, float]]:
    for member, score in rows:
        collection, _, record_id = member.decode().partition("/")
        yield collection, record_id, round(float(score), 3)
