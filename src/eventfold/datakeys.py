"""Crypto-shredding: one data key per personal record, so the immutable log can forget it.

Kafka and the S3 archive never change what they hold, so a person's data in
them is made unreadable instead of removed. A tenant marks collections as
personal (``PATCH /v1/tenants/{t}`` ``{"personal_collections": [...]}``); the
gateway then encrypts the ``data`` of every event whose subject is in one of
them with that record's key (AES-256-GCM), before publishing. The envelope
keeps everything else in clear (type, subject, time, actor) and names its key
in the ``datakey`` extension; ``data`` becomes the base64url string of
``nonce || ciphertext || tag``, bound to the tenant, subject, event id and type
(associated data), so a ciphertext cannot be moved to another event.

Keys live in ``eventfold.data_keys``, sealed by the process keyring
(:mod:`eventfold.sealing`, rotated by ``eventfold keys rotate``). An erasure
(``POST /v1/tenants/{t}/erasure``) destroys the record's keys: the projector
folds the record's events as *erased* from then on (no data), in the live
projection, a redrive and a replay alike, and the ``record.erased`` event the
erasure publishes removes what the projection already held. Deleting a tenant
destroys every key it had.

A write and an erasure of the same record are ordered by a row lock: the write
holds its key ``FOR SHARE`` until its event is in the log, and the erasure's
``UPDATE`` waits for it. So every event encrypted with a key is in the log
before the ``record.erased`` that follows the key's destruction (one record's
events share a partition), and no event after it uses that key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventfold.envelope import CloudEvent
from eventfold.errors import PermanentError
from eventfold.sealing import Keyring, SealError, keyring
from eventfold.settings import Settings
from eventfold.tenancy import DELETED, TenantDirectory

#: The extension naming the key an event's ``data`` is encrypted with.
KEY_EXTENSION = "datakey"
#: The event an erasure publishes (its subject is the erased record).
ERASED = "record.erased"
_NONCE_BYTES = 12
#: Keys kept in memory per process (a key is 32 bytes; an id ~30).
_CACHE_SIZE = 100_000
#: Rounds of "make the missing keys, lock them" before giving up (an erasure between
#: the two makes a round miss its key).
_ATTEMPTS = 3


class DataKeyError(PermanentError):
    """An encrypted event that cannot be opened although its key exists (tampered, or
    sealed with a key the keyring no longer has): a dead letter, never dropped data."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """A record's live key: its id (in events) and the 32 key bytes."""

    id: str
    key: bytes


def is_encrypted(event: CloudEvent) -> bool:
    """Whether ``event``'s data is encrypted with a data key."""
    return KEY_EXTENSION in (event.model_extra or {})


def _purpose(tenant: str) -> str:
    # A key sealed for one tenant does not open as another's.
    return f"datakey:{tenant}"


def _associated(event: CloudEvent) -> bytes:
    return "\x1f".join((event.tenant or "", event.subject or "", event.id, event.type)).encode()


def encrypt(event: CloudEvent, key: DataKey) -> CloudEvent:
    """``event`` with its ``data`` encrypted with ``key`` and the key named in ``datakey``.

    The event must carry its tenant (stamped) and its final id.
    """
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(key.key).encrypt(nonce, orjson.dumps(event.data), _associated(event))
    text = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
    return event.model_copy(update={"data": text, KEY_EXTENSION: key.id})


def decrypt(event: CloudEvent, key: bytes) -> CloudEvent:
    """``event`` with its ``data`` in clear again (the ``datakey`` extension stays)."""
    if not isinstance(event.data, str):
        raise DataKeyError(f"event {event.id}: encrypted data is not a string")
    try:
        raw = base64.urlsafe_b64decode(event.data + "=" * (-len(event.data) % 4))
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated(event))
    except (binascii.Error, ValueError, InvalidTag):
        raise DataKeyError(f"event {event.id}: its data does not open with its key") from None
    return event.model_copy(update={"data": orjson.loads(plain)})


def erased(event: CloudEvent) -> CloudEvent:
    """``event`` as it is folded once its key is destroyed: everything but its data."""
    return event.model_copy(update={"data": None})


async def locked_keys(
    conn: asyncpg.Connection, keyring: Keyring, tenant: str, subjects: Sequence[str]
) -> dict[str, DataKey]:
    """The live keys of ``subjects`` that exist, locked ``FOR SHARE`` until the caller's
    transaction ends (publish the events before it does: see the module doc)."""
    rows = await conn.fetch(
        "SELECT id, subject, sealed FROM eventfold.data_keys WHERE tenant = $1"
        " AND subject = ANY($2::text[]) AND destroyed_at IS NULL ORDER BY subject FOR SHARE",
        tenant,
        sorted(set(subjects)),  # one order for every writer: no deadlock between them
    )
    return {
        r["subject"]: DataKey(r["id"], keyring.open(r["sealed"], purpose=_purpose(tenant)))
        for r in rows
    }


async def make_keys(
    conn: asyncpg.Connection, keyring: Keyring, tenant: str, subjects: Sequence[str]
) -> None:
    """Make a live key for each of ``subjects`` that has none (outside any transaction:
    a key is committed before anything is encrypted with it, so a publish that fails
    after Kafka took the event, a timeout, never leaves an event without its key)."""
    await conn.execute(
        "INSERT INTO eventfold.data_keys (id, tenant, subject, sealed)"
        " SELECT i, $1, s, k FROM unnest($2::text[], $3::text[], $4::text[]) AS u(i, s, k)"
        " ON CONFLICT (tenant, subject) WHERE destroyed_at IS NULL DO NOTHING",
        tenant,
        ["dk_" + secrets.token_urlsafe(16) for _ in subjects],
        list(subjects),
        [keyring.seal(secrets.token_bytes(32), purpose=_purpose(tenant)) for _ in subjects],
    )


async def destroy(conn: asyncpg.Connection, tenant: str, subject: str) -> int:
    """Destroy the record's keys (waits for writes holding them); how many were live."""
    done: str = await conn.execute(
        "UPDATE eventfold.data_keys SET sealed = NULL, destroyed_at = now()"
        " WHERE tenant = $1 AND subject = $2 AND destroyed_at IS NULL",
        tenant,
        subject,
    )
    return int(done.split()[-1])


class Sealer:
    """Encrypts the personal events of a publish, holding their keys until it is done.

    Given to the :class:`~eventfold.publisher.Publisher` of every process that
    publishes (the gateway, the workflow and sync processors): whichever writes
    into a personal collection, its data reaches the log encrypted.
    """

    def __init__(self, pool: asyncpg.Pool, tenants: TenantDirectory, keyring: Keyring) -> None:
        self._pool = pool
        self._tenants = tenants
        self.keyring = keyring

    async def personal(self, tenant: str, events: Sequence[CloudEvent]) -> list[int]:
        """Indexes of the ``events`` to encrypt (data, and a subject in a personal collection)."""
        candidates = [
            n
            for n, ev in enumerate(events)
            if ev.data is not None and ev.subject and "/" in ev.subject and not is_encrypted(ev)
        ]
        if not candidates:
            return []
        found = await self._tenants.get(tenant)
        # A deleted tenant's events are folded into nothing: no key is made for them.
        if found is None or found.status == DELETED or not found.personal_collections:
            return []
        personal = found.personal_collections
        return [n for n in candidates if str(events[n].subject).split("/", 1)[0] in personal]

    @contextlib.asynccontextmanager
    async def sealed(
        self, tenant: str, events: Sequence[CloudEvent]
    ) -> AsyncIterator[list[CloudEvent]]:
        """``events`` with personal data encrypted; publish them inside the block (their
        keys stay locked against an erasure until it ends)."""
        which = await self.personal(tenant, events)
        if not which:
            yield list(events)
            return
        out = list(events)
        subjects = sorted({str(out[n].subject) for n in which})
        # One connection: a second one per publish could wait for a pool that the
        # publishes holding their first have emptied.
        async with self._pool.acquire(timeout=5) as conn:
            for _ in range(_ATTEMPTS):
                async with conn.transaction():
                    keys = await locked_keys(conn, self.keyring, tenant, subjects)
                    missing = [s for s in subjects if s not in keys]
                    if not missing:
                        for n in which:
                            out[n] = encrypt(out[n], keys[str(out[n].subject)])
                        yield out
                        return
                await make_keys(conn, self.keyring, tenant, missing)
        raise DataKeyError(f"no data keys for {tenant}: {missing[:3]}")


class KeyCache:
    """Opened keys by id, for the processors that decrypt (``None``: destroyed).

    A key is never changed, only destroyed; a process that still holds one a
    little after its destruction folds the record's events with their data,
    and the ``record.erased`` that follows in the log removes it, so the
    projection ends the same either way.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keys: OrderedDict[str, bytes | None] = OrderedDict()

    async def load(self, conn: asyncpg.Connection, tenant: str, ids: set[str]) -> None:
        """Read the keys of ``ids`` not in memory (unknown ids count as destroyed)."""
        missing = [i for i in ids if i not in self._keys]
        if not missing:
            for i in ids:
                self._keys.move_to_end(i)
            return
        rows = await conn.fetch(
            "SELECT id, tenant, sealed FROM eventfold.data_keys WHERE id = ANY($1::text[])",
            missing,
        )
        found = {r["id"]: r for r in rows}
        for key_id in missing:
            row = found.get(key_id)
            # A key of another tenant is no key of this one (an event cannot borrow it).
            if row is None or row["sealed"] is None or row["tenant"] != tenant:
                self._put(key_id, None)
                continue
            try:
                self._put(key_id, self.keyring.open(row["sealed"], purpose=_purpose(tenant)))
            except SealError as exc:
                raise DataKeyError(f"data key {key_id}: {exc}") from None

    def get(self, key_id: str) -> bytes | None:
        """The key loaded for ``key_id`` (None when destroyed or unknown)."""
        return self._keys.get(key_id)

    def _put(self, key_id: str, key: bytes | None) -> None:
        self._keys[key_id] = key
        if len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)

    async def open_all(
        self, conn: asyncpg.Connection, tenant: str, events: Sequence[CloudEvent]
    ) -> list[CloudEvent]:
        """``events`` with their data decrypted, or removed where the key is destroyed."""
        wanted = {str((e.model_extra or {})[KEY_EXTENSION]) for e in events if is_encrypted(e)}
        if not wanted:
            return list(events)
        await self.load(conn, tenant, wanted)
        out: list[CloudEvent] = []
        for ev in events:
            if not is_encrypted(ev):
                out.append(ev)
                continue
            key = self.get(str((ev.model_extra or {})[KEY_EXTENSION]))
            out.append(erased(ev) if key is None else decrypt(ev, key))
        return out


_cache: KeyCache | None = None


def configure(keyring: Keyring) -> KeyCache:
    """Use ``keyring`` to open data keys in this process (every entry point that folds
    events calls it; :func:`cache` falls back to the environment's settings)."""
    global _cache
    _cache = KeyCache(keyring)
    return _cache


def cache() -> KeyCache:
    """The process's key cache (configured from the environment on first use)."""
    if _cache is None:
        return configure(keyring(Settings.from_env()))
    return _cache


def strip_data(envelope: Any) -> Any:
    """An envelope (dict) without its ``data``: what history keeps of an erased record."""
    if isinstance(envelope, dict):
        return {k: v for k, v in envelope.items() if k != "data"}
    return envelope
