"""API keys: their format, their hash, and the per-process directory that checks them.

A key reads ``efk_<id>_<secret>``: ``id`` is 16 hex digits (64 random bits,
also the key's public name in ``GET …/api-keys``), ``secret`` 43 base64url
characters (256 random bits). The id makes the lookup one primary-key read;
only ``sha256(secret)`` is ever stored (in the ``apikey.created`` event and
the ``eventfold.api_keys`` projection), and it is compared in constant time.
A fast hash is enough because the secret is random and long: there is no
dictionary to try, so a slow KDF would only cost every request CPU.

Each process keeps the keys it has checked in memory. Revocation reaches every
process within a second: the projector NOTIFYs ``eventfold_apikeys`` with the
key id in the transaction that revokes it, and each process's
:class:`ApiKeyDirectory` listens and drops the entry. While that listener is
disconnected (a notification may be missed), entries live at most
:data:`UNWATCHED_TTL` seconds, and reconnecting drops them all.

Ids that name no key are remembered apart from the keys, in a bounded table
of their own: a flood of made-up ids (each one a lookup, limited per client
address by :mod:`eventfold.authlimit`) can push out only other made-up ids,
never a key that works.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from eventfold import actors
from eventfold.auth import Principal
from eventfold.backoff import Backoff
from eventfold.db import connect
from eventfold.errors import Unauthorized

log = logging.getLogger("eventfold.apikeys")

PREFIX = "efk_"
#: The channel the projector notifies with a key id when that key changes.
APIKEY_CHANNEL = "eventfold_apikeys"
_KEY = re.compile(r"efk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
#: How long a checked key is trusted while revocations are being heard.
WATCHED_TTL = 60.0
#: ... and while they may be missed (listener reconnecting): the revocation bound.
UNWATCHED_TTL = 1.0
#: An unknown key id is looked up again after this long (a key being projected).
_NEGATIVE_TTL = 1.0
#: Keys (and ids that name none) remembered per process; past it the oldest goes.
MAX_KNOWN = 10_000
MAX_UNKNOWN = 10_000
#: One lookup (acquire included); a listener ping.
_LOOKUP_TIMEOUT = 5.0
_PING_INTERVAL = 5.0
_PING_TIMEOUT = 2.0
#: ``WWW-Authenticate`` of a refused key (RFC 9110 allows any scheme name).
_CHALLENGE = 'ApiKey realm="eventfold", header="X-API-Key"'


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret part: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(id, key, secret_hash)``; ``key`` is shown once and then forgotten."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret)


def parse_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None."""
    match = _KEY.fullmatch(key.strip())
    return (match[1], match[2]) if match else None


def refused(detail: str) -> Unauthorized:
    """The 401 of a key that is missing, malformed, unknown or revoked."""
    return Unauthorized(detail, headers={"WWW-Authenticate": _CHALLENGE})


class UnknownApiKey(Unauthorized):
    """A well-formed key whose id the projection does not hold (yet: it may be projected soon)."""

    def __init__(self) -> None:
        super().__init__("unknown API key", headers={"WWW-Authenticate": _CHALLENGE})


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the projection holds it."""

    id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """The item of ``GET …/api-keys``: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def stored_key(row: asyncpg.Record) -> StoredKey:
    """A :class:`StoredKey` from an ``eventfold.api_keys`` row."""
    return StoredKey(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        roles=tuple(row["roles"]),
        secret_hash=row["secret_hash"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


_COLUMNS = "id, tenant, name, roles, secret_hash, created_at, revoked_at"


class ApiKeyDirectory:
    """Checks ``X-API-Key`` values against the projection, caching what it learnt."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        watched_ttl: float = WATCHED_TTL,
        max_known: int = MAX_KNOWN,
        max_unknown: int = MAX_UNKNOWN,
        others: Sequence[tuple[str, asyncpg.Pool]] = (),
    ) -> None:
        #: Every database server's address and pool (a key is on its tenant's server;
        #: ``others`` are the servers past the first, see :mod:`eventfold.placement`).
        self._servers = [(dsn, pool), *others]
        self._watched_ttl = watched_ttl
        #: Looked-up keys (revoked ones too) and, apart, ids that named no key; each
        #: by the time of its lookup, oldest first.
        self._known: OrderedDict[str, tuple[float, StoredKey]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._max_known = max_known
        self._max_unknown = max_unknown
        #: The servers whose key changes are heard now.
        self._heard: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _listening(self) -> bool:
        return len(self._heard) == len(self._servers)

    async def start(self) -> None:
        """Begin listening for key changes on every server (in the background, reconnecting)."""
        self._tasks = [
            asyncio.create_task(self._listen_forever(dsn), name="apikey-listener")
            for dsn, _ in self._servers
        ]

    async def stop(self) -> None:
        """Stop listening and release the connections."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def authenticate(self, key: str, *, fresh: bool = False) -> Principal:
        """The principal of a valid, unrevoked ``key``; 401 otherwise.

        ``fresh`` skips the cache (after a consistency wait: the key may have
        just been created or revoked). A well-formed key whose id is unknown is
        :class:`UnknownApiKey` (a 401 that a consistency wait may turn around).
        """
        parsed = parse_key(key)
        if parsed is None:
            raise refused("malformed API key")
        key_id, secret = parsed
        found = await self.lookup(key_id, fresh=fresh)
        # Compared even for an unknown id, so timing does not tell ids apart.
        expected = found.secret_hash if found is not None else hash_secret("")
        matches = hmac.compare_digest(expected, hash_secret(secret))
        if found is None:
            raise UnknownApiKey()
        if not matches:
            raise refused("unknown API key")
        if found.revoked_at is not None:
            raise refused("the API key was revoked")
        return Principal(
            subject=actors.apikey(found.id),
            tenant=found.tenant,
            roles=frozenset(found.roles),
            kind="apikey",
        )

    async def lookup(self, key_id: str, *, fresh: bool = False) -> StoredKey | None:
        """The key ``key_id`` (revoked or not), from the cache when recent enough."""
        now = time.monotonic()
        if not fresh:
            hit = self._known.get(key_id)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
            missed = self._unknown.get(key_id)
            if missed is not None and now - missed < _NEGATIVE_TTL:
                return None
        row = None
        async with asyncio.timeout(_LOOKUP_TIMEOUT):
            # The key's tenant (so its server) is known only once it is found.
            for _, pool in self._servers:
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(
                        f"SELECT {_COLUMNS} FROM eventfold.api_keys WHERE id = $1", key_id
                    )
                if row is not None:
                    break
        if row is None:
            self._known.pop(key_id, None)
            _remember(self._unknown, key_id, now, self._max_unknown)
            return None
        found = stored_key(row)
        self._unknown.pop(key_id, None)
        _remember(self._known, key_id, (now, found), self._max_known)
        return found

    @property
    def ttl(self) -> float:
        """How long a checked key is trusted right now."""
        return self._watched_ttl if self._listening else UNWATCHED_TTL

    def forget(self, key_id: str) -> None:
        """Drop ``key_id`` from the cache (it changed)."""
        self._known.pop(key_id, None)
        self._unknown.pop(key_id, None)

    def clear(self) -> None:
        """Forget every key and unknown id (revocations may have been missed)."""
        self._known.clear()
        self._unknown.clear()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.forget(payload)

    async def _listen_forever(self, dsn: str) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                lost = asyncio.Event()
                async with asyncio.timeout(10):
                    conn = await connect(dsn)
                    conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                    await conn.add_listener(APIKEY_CHANNEL, self._on_notify)
                # Anything revoked while not listening is forgotten now.
                self.clear()
                self._heard.add(dsn)
                backoff.reset()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), _PING_INTERVAL)
                        break
                    await conn.execute("SELECT 1", timeout=_PING_TIMEOUT)
            except Exception as exc:  # the listener must outlive any failure: it reconnects
                log.warning("api key listener down, reconnecting", extra={"error": repr(exc)})
            finally:
                self._heard.discard(dsn)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1)
                    if not conn.is_closed():
                        conn.terminate()
            await backoff.sleep()


def _remember(table: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    """Put ``key`` last in ``table``, dropping the oldest entries past ``limit``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)
