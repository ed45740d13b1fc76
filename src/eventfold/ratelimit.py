"""Per-tenant request rate limits: a token bucket in Redis, shared by every API instance.

Each tenant has one bucket (key ``ef:{tenant}:rl``) holding up to ``burst``
tokens and refilled at ``requests_per_second``; a request of the tenant's own
credentials takes one token, and finds the bucket empty → 429. The whole
read-refill-take step is one Lua script, so concurrent requests on any number
of instances never take the same token twice, and the clock is Redis's own
(``TIME``), so instances with skewed clocks agree.

Limits come from the tenant's ``limits`` (set when it is created); a value it
lacks falls back to ``EVENTFOLD_RATE_LIMIT_DEFAULT_RPS`` / ``_BURST``.

Answers carry ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (whole
tokens left) and ``RateLimit-Reset`` (seconds until the bucket is full again),
the fields of the IETF httpapi RateLimit header draft; a 429 adds
``Retry-After`` (seconds until one token is back).

Redis down or slow must not take the API down with it: the check has a
deadline, a few failures in a row open a circuit breaker
(:class:`eventfold.breaker.Breaker`) for a few seconds, and meanwhile requests
are served unlimited (fail open), each one counted in
``eventfold_ratelimit_fail_open_total``. One slow answer under a
burst does not open it: that would lift the limits exactly when they matter.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from eventfold.breaker import Breaker
from eventfold.metrics import Metrics
from eventfold.redispipe import AutoPipeline

log = logging.getLogger("eventfold.ratelimit")

#: KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns {allowed, tokens left as text}.
#: TIME before the writes is fine: scripts replicate their effects (Redis >= 5).
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""
_BUCKET_SHA = hashlib.sha1(_BUCKET_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id


def bucket_key(tenant: str) -> str:
    """The Redis key of ``tenant``'s bucket (the tenant prefix, as every key)."""
    return f"ef:{tenant}:rl"


@dataclass(frozen=True, slots=True)
class Limits:
    """A token bucket's shape: refill rate and capacity."""

    requests_per_second: float
    burst: int

    @classmethod
    def of(cls, limits: Mapping[str, Any], default: Limits) -> Limits:
        """The tenant's ``limits``, each value it lacks (or holds malformed) from ``default``."""
        rps, burst = limits.get("requests_per_second"), limits.get("burst")
        return cls(
            requests_per_second=float(rps)
            if isinstance(rps, int | float) and not isinstance(rps, bool) and rps > 0
            else default.requests_per_second,
            burst=int(burst)
            if isinstance(burst, int | float) and not isinstance(burst, bool) and burst >= 1
            else default.burst,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The bucket's answer to one request."""

    allowed: bool
    limits: Limits
    #: Tokens left after this request (fractional).
    tokens: float

    @property
    def retry_after(self) -> int:
        """Whole seconds until one token is back (at least 1)."""
        return max(1, math.ceil((1 - self.tokens) / self.limits.requests_per_second))

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        full_in = (self.limits.burst - self.tokens) / self.limits.requests_per_second
        headers = {
            "RateLimit-Limit": str(self.limits.burst),
            "RateLimit-Remaining": str(max(0, math.floor(self.tokens))),
            "RateLimit-Reset": str(max(0, math.ceil(full_in))),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


#: The request's :class:`Decision`, for the response headers.
DECISION_KEY = web.RequestKey("ratelimit", Decision)


class RateLimiter:
    """Checks tenants' buckets in Redis; fails open (and counts it) when Redis fails."""

    def __init__(
        self,
        redis: Redis | None,
        metrics: Metrics,
        default: Limits,
        *,
        timeout: float = 1.0,
        failures_to_open: int = 3,
        open_seconds: float = 2.0,
    ) -> None:
        self._metrics = metrics
        self.default = default
        #: Deadline of one check (a healthy Redis answers in well under a millisecond).
        self._timeout = timeout
        #: After this many failures in a row, Redis is left alone for ``open_seconds``
        #: (no deadline paid per request meanwhile), then one request probes it.
        self._breaker = Breaker(
            failures=failures_to_open,
            cooldown=open_seconds,
            name="rate limit",
            fallback="requests served unlimited",
        )
        #: Shared with the other Redis users of the process: concurrent requests' checks
        #: (and their dedup commands) go to Redis as one pipeline per event-loop pass.
        self._pipe = AutoPipeline.shared(redis) if redis is not None else None

    async def _take(self, key: str, shape: Limits) -> tuple[int, bytes]:
        """Run the bucket script (by its hash; sent whole once if Redis lacks it)."""
        assert self._pipe is not None
        args = (key, shape.requests_per_second, shape.burst)
        started = time.monotonic()
        try:
            reply = await self._pipe.execute(
                "EVALSHA", _BUCKET_SHA, 1, *args, timeout=self._timeout
            )
        except NoScriptError:  # a restarted or flushed Redis: EVAL loads it again
            left = self._timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError("rate limit check past its deadline") from None
            reply = await self._pipe.execute("EVAL", _BUCKET_SCRIPT, 1, *args, timeout=left)
        allowed, tokens = reply
        return int(allowed), tokens

    async def check(self, tenant: str, limits: Mapping[str, Any]) -> Decision | None:
        """Take one token of ``tenant``'s bucket; None when Redis cannot say (fail open)."""
        if self._pipe is None or not self._breaker.allow():
            self._metrics.ratelimit_fail_open.inc()
            return None
        shape = Limits.of(limits, self.default)
        try:
            allowed, tokens = await self._take(bucket_key(tenant), shape)
        except (RedisError, OSError, TimeoutError) as exc:
            self._breaker.failure(exc)
            self._metrics.dependency_errors.labels("redis").inc()
            self._metrics.ratelimit_fail_open.inc()
            log.warning("rate limits unavailable, serving unlimited", extra={"error": repr(exc)})
            return None
        self._breaker.success()
        decision = Decision(bool(allowed), shape, float(tokens))
        if not decision.allowed:
            self._metrics.ratelimit_refused.inc()
        return decision


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request's ``RateLimit-*`` headers on its answer."""
    decision = request.get(DECISION_KEY)
    if decision is not None:
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
