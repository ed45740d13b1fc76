"""Typed keys of what an aiohttp application shares: one module, every key, one type each.

The composition root (:mod:`entrypoints.bootstrap`) puts each resource under its
key when the app starts; route modules of the gateway and of the read API take
them out (``request.app[POOL]``). The keys live here, below both, so neither
side imports the other, and the resource modules (:mod:`eventfold.apikeys`,
:mod:`eventfold.ratelimit`, :mod:`eventfold.cache`, …) know nothing of aiohttp
applications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from eventfold.admission import Admission, WaitSlots
from eventfold.apikeys import ApiKeyDirectory
from eventfold.auth import TokenVerifier
from eventfold.authlimit import AuthLimit
from eventfold.cache import RecordCache
from eventfold.checkpoints import CheckpointWatcher
from eventfold.cursors import CursorCodec
from eventfold.eventtypes.definitions import Registry
from eventfold.health import Health
from eventfold.logend import LogEnd
from eventfold.metrics import Metrics
from eventfold.placement import Placement
from eventfold.ratelimit import RateLimiter
from eventfold.settings import Settings
from eventfold.tenancy import TenantDirectory

if TYPE_CHECKING:
    # The read API's process never imports aiokafka: these keys are typed, not built, here.
    from eventfold.publisher import Publisher, SendPolicy

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
VERIFIER = web.AppKey("verifier", TokenVerifier)
TENANTS = web.AppKey("tenants", TenantDirectory)
#: A pool on every database server and the tenant → server directory (``app[POOL]``
#: is ``main``'s): tenant data is read through it.
PLACEMENT = web.AppKey("placement", Placement)
WATCHER = web.AppKey("watcher", CheckpointWatcher)
#: Each database server's watcher (``WATCHER`` is ``main``'s).
WATCHERS: web.AppKey[dict[str, CheckpointWatcher]] = web.AppKey("watchers")
LOG_END = web.AppKey("log_end", LogEnd)
CURSORS = web.AppKey("cursors", CursorCodec)
HEALTH = web.AppKey("health", Health)
#: The record cache (Redis, behind its breaker).
CACHE = web.AppKey("cache", RecordCache)
#: This process's API key directory (HTTP parts only).
API_KEYS = web.AppKey("api_keys", ApiKeyDirectory)
#: This process's cache of tenant event types (HTTP parts only).
EVENT_TYPES = web.AppKey("event_types", Registry)
#: This process's per-tenant rate limiter (HTTP parts only).
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
#: This process's limit of failed authentications per client address.
AUTH_LIMIT = web.AppKey("auth_limit", AuthLimit)
#: Requests in flight, and the limit.
ADMISSION = web.AppKey("admission", Admission)
#: Consistency waits in flight per tenant, and the limit.
WAIT_SLOTS = web.AppKey("wait_slots", WaitSlots)
#: The events topic's publisher (the gateway's part).
PUBLISHER: web.AppKey[Publisher] = web.AppKey("publisher")
#: Overrides the publisher's deadlines and retries (tests set it before startup).
SEND_POLICY: web.AppKey[SendPolicy] = web.AppKey("send_policy")

#: Every request ends within this many seconds (503 past it), unless its handler is
#: marked :func:`eventfold.web.unbounded`. Above the longest wait a handler makes on
#: purpose: a consistency wait (5 s) plus a read, or a publish's own deadline plus Redis.
REQUEST_DEADLINE = web.AppKey("request_deadline", float)
