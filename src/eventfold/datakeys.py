"""Crypto-shredding: one data key per personal record, so the immutable log can forget it.

Kafka and the S3 archive never change what they hold, so a person's data in
them is made unreadable instead of removed. A tenant marks collections as
personal (``PATCH /v1/tenants/{t}`` ``{"personal_collections": [...]}``);
every publisher (the gateway, the workflow and sync processors) then encrypts
the ``data`` of each event whose subject is in one of them with that record's
key (AES-256-GCM) before Kafka has it (:class:`Sealer`). The envelope keeps
everything else in clear (type, subject, time, actor) and names its key in the
``datakey`` extension; ``data`` becomes the base64 string of
``nonce || ciphertext || tag``, bound to the tenant, subject, event id and type
(associated data), so a ciphertext cannot be moved to another event.

Keys live in ``eventfold.data_keys``, sealed by the process keyring
(:mod:`eventfold.sealing`, re-sealed by ``eventfold keys rotate``). The fold
opens an event's data with its key (:class:`KeyCache`); once the key is
destroyed it folds the event without data, the same live, in a redrive and in
a replay. An erasure (``POST /v1/tenants/{t}/erasure``) destroys the record's
keys and publishes ``record.erased``, which makes the record a tombstone and
removes the data the projection already held. Deleting a tenant destroys every
key it had.

Publishers keep the keys they used in memory, per tenant, for as long as their
tenant directory keeps the tenant: an erasure notifies every process that
listens (the API and gateway processes forget the tenant at its commit), the
others read the tenant again within the directory's lifetime (30 s). A write
that races with the erasure of its record inside that window is encrypted with
the destroyed key: it is folded without its data, like the record's earlier
events (the erasure wins). The fold forgets a record's keys when it folds its
``record.erased``, so what comes after it in the log is folded the same live
and in a replay.
"""

from __future__ import annotations

import binascii
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventfold.db import KeptConnection
from eventfold.envelope import CloudEvent, replaced
from eventfold.errors import PermanentError, Unavailable
from eventfold.groupcommit import Batcher
from eventfold.placement import Placement, pool_of
from eventfold.sealing import Keyring, SealError, keyring
from eventfold.settings import Settings
from eventfold.tenancy import DELETED, Tenant, TenantDirectory

#: The extension naming the key an event's ``data`` is encrypted with.
KEY_EXTENSION = "datakey"
#: The event an erasure publishes (its subject is the erased record).
ERASED = "record.erased"
_NONCE_BYTES = 12
#: Keys kept in memory per process, by a publisher and by the fold.
_CACHE_SIZE = 100_000
#: Rounds of "make the missing keys" before giving up (another process making the
#: same record's key at once makes a round miss it).
_ATTEMPTS = 3


class DataKeyError(PermanentError):
    """An encrypted event that cannot be opened although its key exists (tampered, or
    sealed with a key the keyring no longer has): a dead letter, never dropped data."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """A record's key: its id (in events) and the cipher made from its 32 bytes."""

    id: str
    cipher: AESGCM

    @classmethod
    def of(cls, key_id: str, key: bytes) -> DataKey:
        """The key ``key_id`` with the bytes ``key``."""
        return cls(key_id, AESGCM(key))


def is_encrypted(event: CloudEvent) -> bool:
    """Whether ``event``'s data is encrypted with a data key."""
    return KEY_EXTENSION in (event.model_extra or {})


def _purpose(tenant: str) -> str:
    # A key sealed for one tenant does not open as another's.
    return f"datakey:{tenant}"


def _associated(event: CloudEvent) -> bytes:
    return _bound(event.tenant, event.subject, event.id, event.type)


def _bound(tenant: str | None, subject: str | None, event_id: Any, event_type: Any) -> bytes:
    """The associated data a ciphertext is bound to (see the module's docstring)."""
    return f"{tenant or ''}\x1f{subject or ''}\x1f{event_id}\x1f{event_type}".encode()


def encrypt(event: CloudEvent, key: DataKey, nonce: bytes | None = None) -> CloudEvent:
    """``event`` with its ``data`` encrypted with ``key`` and the key named in ``datakey``.

    The event must carry its tenant (stamped) and its final id. ``nonce``: 12 random
    bytes never used before with ``key`` (drawn here when not given; a publish draws
    the nonces of all its events at once, see :func:`nonces`).
    """
    if nonce is None:
        nonce = os.urandom(_NONCE_BYTES)
    sealed = key.cipher.encrypt(nonce, orjson.dumps(event.data), _associated(event))
    text = pybase64.b64encode_as_string(nonce + sealed)
    return replaced(event, text, **{KEY_EXTENSION: key.id})


def sealed_json(event: CloudEvent, key: DataKey, nonce: bytes) -> bytes:
    """What ``encrypt(event, key, nonce).to_json()`` holds, made without the encrypted
    event: the envelope serialised without its data, the ciphertext and the key's id put
    after the rest (the gateway's hot path: the copy and second serialisation were a
    quarter of the encryption's cost). The event must carry its tenant and final id."""
    sealed = key.cipher.encrypt(nonce, orjson.dumps(event.data), _associated(event))
    head = event.__pydantic_serializer__.to_json(event, exclude_none=True, exclude=_NO_DATA)
    tail = b'"data":"%b","datakey":%b}' % (pybase64.b64encode(nonce + sealed), orjson.dumps(key.id))
    return head[:-1] + (b"," if len(head) > 2 else b"") + tail


_NO_DATA = {"data"}


def nonces(count: int) -> list[bytes]:
    """``count`` random nonces from one read of the system's random source (one system
    call per publish instead of one per event). Random, not counted: several processes
    encrypt with one record's key, and only random nonces cannot collide between them."""
    pool = os.urandom(_NONCE_BYTES * count)
    return [pool[n : n + _NONCE_BYTES] for n in range(0, len(pool), _NONCE_BYTES)]


def decrypt_bytes(event: CloudEvent, key: DataKey) -> bytes:
    """The JSON of ``event``'s data, decrypted; :class:`DataKeyError` when it does not open."""
    if not isinstance(event.data, str):
        raise DataKeyError(f"event {event.id}: encrypted data is not a string")
    return _decrypt(event, event.data, key)


def decrypt(event: CloudEvent, key: DataKey) -> CloudEvent:
    """``event`` with its ``data`` in clear again (the ``datakey`` extension stays)."""
    return replaced(event, orjson.loads(decrypt_bytes(event, key)))


def erased(event: CloudEvent) -> CloudEvent:
    """``event`` as it is folded once its key is destroyed: everything but its data."""
    return replaced(event, None)


async def live_keys(
    conn: asyncpg.Connection, keyring: Keyring, tenant: str, subjects: Sequence[str]
) -> dict[str, DataKey]:
    """The live key of each of ``subjects``, made for those that have none (see
    :func:`live_keys_of`)."""
    found = await live_keys_of(conn, keyring, {(tenant, s) for s in subjects})
    return {subject: key for (_, subject), key in found.items()}


async def live_keys_of(
    conn: asyncpg.Connection, keyring: Keyring, records: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], DataKey]:
    """The live key of each ``(tenant, subject)``, made for those that have none: one
    statement for every tenant, committed before anything is encrypted with its keys
    (so no event outlives its key)."""
    # Sorted: two processes making keys for the same records insert them in one order.
    wanted = sorted(set(records))
    keys: dict[tuple[str, str], DataKey] = {}
    for _ in range(_ATTEMPTS):
        todo = [r for r in wanted if r not in keys]
        # One read of the random source for every key and id of the statement.
        random = os.urandom(48 * len(todo))
        fresh = {r: random[48 * n : 48 * n + 32] for n, r in enumerate(todo)}
        ids = {r: _key_id(random[48 * n + 32 : 48 * n + 48]) for n, r in enumerate(todo)}
        # One JSON parameter (the pool's codec serialises it), not four arrays: asyncpg
        # checks every array element's type in Python, a microsecond and a half per key.
        wanted_json = [
            [t, s, ids[(t, s)], keyring.seal(fresh[(t, s)], purpose=_purpose(t))] for t, s in todo
        ]
        rows = await conn.fetch(
            """WITH wanted AS (
                 SELECT w->>0 AS t, w->>1 AS s, w->>2 AS i, w->>3 AS k
                 FROM json_array_elements($1::json) WITH ORDINALITY AS e (w, n) ORDER BY n
               ), made AS (
                 INSERT INTO eventfold.data_keys (id, tenant, subject, sealed)
                 SELECT i, t, s, k FROM wanted
                 WHERE NOT EXISTS (SELECT 1 FROM eventfold.tenant_homes h
                                   WHERE h.tenant = wanted.t AND h.state <> 'live')
                 ON CONFLICT (tenant, subject) WHERE destroyed_at IS NULL DO NOTHING
                 RETURNING id
               )
               SELECT id, NULL AS tenant, NULL AS subject, NULL AS sealed FROM made
               UNION ALL
               SELECT d.id, d.tenant, d.subject, d.sealed FROM eventfold.data_keys d
               JOIN wanted w ON d.tenant = w.t AND d.subject = w.s
               WHERE d.destroyed_at IS NULL""",
            wanted_json,
        )
        by_id = {key_id: record for record, key_id in ids.items()}
        for row in rows:
            made = by_id.get(row["id"]) if row["tenant"] is None else None
            if made is not None:
                keys[made] = DataKey.of(row["id"], fresh[made])  # its bytes are in hand
            else:
                record = (row["tenant"], row["subject"])
                key = keyring.open(row["sealed"], purpose=_purpose(record[0]))
                keys[record] = DataKey.of(row["id"], key)
        if len(keys) == len(wanted):
            return keys
        # Another process made one of them after this statement's snapshot, or the
        # tenant is leaving this server (no key is made there: its new server would
        # not have it): read again.
    missing = [r for r in wanted if r not in keys]
    moving = await conn.fetchval(
        "SELECT tenant FROM eventfold.tenant_homes WHERE tenant = ANY($1::text[])"
        " AND state <> 'live' LIMIT 1",
        sorted({t for t, _ in missing}),
    )
    if moving is not None:
        raise Unavailable(f"tenant {moving} is moving to another database server", retry_after=1)
    raise DataKeyError(f"no data keys for {missing[:3]}")


def _key_id(random: bytes) -> str:
    # The form secrets.token_urlsafe(16) gives, from bytes drawn with the key's.
    return "dk_" + pybase64.urlsafe_b64encode(random).rstrip(b"=").decode()


async def destroy(conn: asyncpg.Connection, tenant: str, subject: str) -> int:
    """Destroy the record's live keys; how many there were."""
    done: str = await conn.execute(
        "UPDATE eventfold.data_keys SET sealed = NULL, destroyed_at = now()"
        " WHERE tenant = $1 AND subject = $2 AND destroyed_at IS NULL",
        tenant,
        subject,
    )
    return int(done.split()[-1])


class Sealer:
    """Encrypts the personal events of a publish (given to every process's
    :class:`~eventfold.publisher.Publisher`: whoever writes into a personal collection,
    its data reaches the log encrypted)."""

    def __init__(
        self, pool: asyncpg.Pool | Placement, tenants: TenantDirectory, keyring: Keyring
    ) -> None:
        #: One pool, or every server's: a tenant's keys are on its server.
        self._pool = pool
        self._tenants = tenants
        self.keyring = keyring
        #: Per tenant: the directory's entry the keys were used under, and the keys.
        #: A new entry (the tenant read again: changed, erased, or its lifetime over)
        #: starts afresh, so a destroyed key is not used past it.
        self._keys: dict[str, tuple[Tenant, dict[str, DataKey]]] = {}
        self._held = 0
        #: Keys that concurrent publishes need made go out together (group commit), one
        #: statement at a time (the batches go one after another) on a connection kept
        #: for it, with no acquire and release around each.
        self._makers: dict[int, _KeyMaker] = {}

    async def seal(self, tenant: str, events: Sequence[CloudEvent]) -> list[bytes | None]:
        """The envelope as the log is to hold it, data encrypted, of each of ``events`` in
        a personal collection (None for the others: they go out as they are)."""
        out: list[bytes | None] = [None] * len(events)
        found = await self._tenants.get(tenant)  # in memory, but for its first publish
        # A deleted tenant's events are folded into nothing: no key is made for them.
        if found is None or found.status == DELETED or not found.personal_collections:
            return out
        personal = found.personal_collections
        which: list[tuple[int, str]] = []
        for n, ev in enumerate(events):
            subject = ev.subject
            if subject is None or ev.data is None:
                continue
            collection, slash, _ = subject.partition("/")
            if slash and collection in personal and not is_encrypted(ev):
                which.append((n, subject))
        if not which:
            return out
        keys = await self._keys_for(found, {subject for _, subject in which})
        for (n, subject), nonce in zip(which, nonces(len(which)), strict=True):
            out[n] = sealed_json(events[n], keys[subject], nonce)
        return out

    async def close(self) -> None:
        """Wait for the keys being made, then give the makers' connections back."""
        for maker in self._makers.values():
            await maker.close()

    async def _maker_for(self, tenant: str) -> _KeyMaker:
        """The key maker of ``tenant``'s database server."""
        pool = await pool_of(self._pool, tenant)
        maker = self._makers.get(id(pool))
        if maker is None:
            maker = self._makers[id(pool)] = _KeyMaker(pool, self.keyring)
        return maker

    async def _keys_for(self, tenant: Tenant, subjects: set[str]) -> dict[str, DataKey]:
        held = self._keys.get(tenant.id)
        if held is None or held[0] is not tenant:
            if held is not None:
                self._held -= len(held[1])
            held = self._keys[tenant.id] = (tenant, {})
        keys = held[1]
        missing = [s for s in subjects if s not in keys]
        if missing:
            maker = await self._maker_for(tenant.id)
            found = await maker.batcher.submit((tenant.id, tuple(missing)))
            if self._held + len(found) > _CACHE_SIZE:
                self._keys = {tenant.id: held}  # bounded: a reset beats an LRU for this
                self._held = len(keys)
            keys.update(found)
            self._held += len(found)
        return keys


class _KeyMaker:
    """Makes the keys concurrent publishes need on one database server: together (group
    commit), one statement at a time (the batches go one after another) on a connection
    kept for it, with no acquire and release around each."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self.keyring = keyring
        self.batcher: Batcher[tuple[str, tuple[str, ...]], dict[str, DataKey]] = Batcher(
            self._make_many, None, max_in_flight=1, name="data-keys"
        )
        self._conn = KeptConnection(pool, timeout=5)

    async def close(self) -> None:
        """Wait for the keys being made, then give the connection back."""
        await self.batcher.close()
        await self._conn.drop()

    async def _make_many(
        self, asks: Sequence[tuple[str, tuple[str, ...]]]
    ) -> list[dict[str, DataKey]]:
        """The keys each ``(tenant, subjects)`` asks for: one statement for them all."""
        wanted = {(tenant, subject) for tenant, subjects in asks for subject in subjects}
        conn = await self._conn.get()
        try:
            found = await live_keys_of(conn, self.keyring, wanted)
        except BaseException:
            # Whatever failed (the server, a cancellation mid-statement), the next
            # statement starts on a fresh connection.
            await self._conn.drop()
            raise
        return [{s: found[(t, s)] for s in subjects} for t, subjects in asks]


class KeyCache:
    """Opened keys by id, for the fold (``None``: destroyed, or not this tenant's)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keys: OrderedDict[str, DataKey | None] = OrderedDict()
        #: (tenant, subject) -> the ids loaded for it, to forget them on its erasure.
        self._by_subject: dict[tuple[str, str], set[str]] = {}

    async def load(self, conn: asyncpg.Connection, tenant: str, ids: set[str]) -> None:
        """Read the keys of ``ids`` not in memory (unknown ids count as destroyed)."""
        missing = [i for i in ids if i not in self._keys]
        if not missing:
            return
        # Key ids are [A-Za-z0-9_-]: one text parameter (asyncpg checks each element of an
        # array in Python). A key of another tenant is no key of this one (not found).
        rows = await conn.fetch(
            "SELECT id, subject, sealed FROM eventfold.data_keys"
            " WHERE id = ANY(string_to_array($1, ',')) AND tenant = $2",
            ",".join(missing),
            tenant,
        )
        purpose, by_subject = _purpose(tenant), self._by_subject
        opened: set[str] = set()
        for key_id, subject, sealed in rows:
            if sealed is None:
                continue  # destroyed
            try:
                key = self.keyring.open(sealed, purpose=purpose)
            except SealError as exc:
                raise DataKeyError(f"data key {key_id}: {exc}") from None
            self._put(key_id, DataKey.of(key_id, key))
            by_subject.setdefault((tenant, subject), set()).add(key_id)
            opened.add(key_id)
        for key_id in missing:
            if key_id not in opened:
                self._put(key_id, None)  # destroyed, unknown, or another tenant's

    async def load_named(self, pool: asyncpg.Pool, named: Iterable[tuple[str, str]]) -> None:
        """Read the keys ``(tenant, key id)`` not in memory (see :func:`sealed_with`): one
        statement per tenant."""
        wanted: dict[str, set[str]] = {}
        for tenant, key_id in named:
            if key_id not in self._keys:
                wanted.setdefault(tenant, set()).add(key_id)
        if wanted:
            async with pool.acquire(timeout=10) as conn:
                for tenant, ids in wanted.items():
                    await self.load(conn, tenant, ids)

    def get(self, key_id: str) -> DataKey | None:
        """The key ``key_id`` if it is in memory and not destroyed."""
        return self._keys.get(key_id)

    def forget(self, tenant: str, subject: str) -> None:
        """Drop the record's keys (its erasure is folded: what follows reads them again)."""
        for key_id in self._by_subject.pop((tenant, subject), ()):
            self._keys.pop(key_id, None)

    def _put(self, key_id: str, key: DataKey | None) -> None:
        self._keys[key_id] = key
        if len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)
            if len(self._by_subject) > _CACHE_SIZE:
                self._by_subject.clear()  # only a hint for forget(): its keys are gone too

    async def open_all(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        items: Sequence[tuple[CloudEvent, bytes | None]],
    ) -> list[tuple[CloudEvent, bytes | None]]:
        """Each ``(event, raw envelope)`` with its data decrypted, or removed where the key
        is destroyed; the raw envelope in clear when it can be made by replacing the
        ciphertext with the plain JSON (else None: the caller serialises the event)."""
        wanted = {str((e.model_extra or {})[KEY_EXTENSION]) for e, _ in items if is_encrypted(e)}
        if not wanted:
            return list(items)
        await self.load(conn, tenant, wanted)
        out: list[tuple[CloudEvent, bytes | None]] = []
        for ev, raw in items:
            extra = ev.model_extra
            key_id = extra.get(KEY_EXTENSION) if extra else None
            if key_id is None:
                out.append((ev, raw))
                continue
            key = self._keys.get(str(key_id))
            out.append(_open(ev, raw, key) if key is not None else (erased(ev), None))
        return out


#: Where an envelope's encrypted data starts, as publishers serialise it.
_DATA = b'"data":"'


def sealed_with(doc: Any) -> tuple[str, str] | None:
    """``(tenant, key id)`` of an envelope read as JSON whose data is encrypted (else None)."""
    if not isinstance(doc, dict):
        return None
    key_id = doc.get(KEY_EXTENSION)
    if key_id is None:
        return None
    tenant = doc.get("tenant")
    if isinstance(key_id, str) and isinstance(tenant, str) and isinstance(doc.get("data"), str):
        return tenant, key_id
    return None


def open_doc(doc: dict[str, Any], raw: bytes, key: DataKey) -> bytes | None:
    """Open an envelope's data in ``doc`` (parsed from ``raw``) before it is validated:
    one validation of the opened envelope instead of one of the sealed envelope and a
    copy. Returns ``raw`` with the plain JSON in place of the ciphertext (None when it
    is not found there); :class:`DataKeyError` when the data does not open."""
    text: str = doc["data"]
    sealed = text.encode()
    associated = _bound(doc.get("tenant"), doc.get("subject"), doc.get("id"), doc.get("type"))
    try:
        opened = memoryview(pybase64.b64decode(sealed, validate=True))
        plain = key.cipher.decrypt(opened[:_NONCE_BYTES], opened[_NONCE_BYTES:], associated)
    except (binascii.Error, ValueError, InvalidTag):
        raise DataKeyError(f"event {doc.get('id')}: its data does not open with its key") from None
    doc["data"] = orjson.loads(plain)
    return _splice(raw, sealed, plain)


def _splice(raw: bytes, sealed: bytes, plain: bytes) -> bytes | None:
    # By position, not by bytes.replace: searching for the ~1 KiB ciphertext cost more
    # than decrypting it. The bytes at the position must be the ciphertext.
    start = raw.find(_DATA) + len(_DATA)
    end = start + len(sealed)
    if start < len(_DATA) or raw[end : end + 1] != b'"' or not raw.startswith(sealed, start):
        return None
    return b"".join((raw[: start - 1], plain, raw[end + 1 :]))


def _open(event: CloudEvent, raw: bytes | None, key: DataKey) -> tuple[CloudEvent, bytes | None]:
    """``event`` with its data decrypted, and ``raw`` with the plain JSON in place of the
    ciphertext (None when the ciphertext is not found in it as publishers write it)."""
    text = event.data
    if not isinstance(text, str):
        raise DataKeyError(f"event {event.id}: encrypted data is not a string")
    sealed = text.encode()
    plain = _decrypt(event, sealed, key)
    opened = replaced(event, orjson.loads(plain))
    return opened, _splice(raw, sealed, plain) if raw is not None else None


def _decrypt(event: CloudEvent, sealed: bytes | str, key: DataKey) -> bytes:
    try:
        raw = pybase64.b64decode(sealed, validate=True)
        return key.cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated(event))
    except (binascii.Error, ValueError, InvalidTag):
        raise DataKeyError(f"event {event.id}: its data does not open with its key") from None


_cache: KeyCache | None = None


def configure(keyring: Keyring) -> KeyCache:
    """Use ``keyring`` to open data keys in this process (:func:`cache` falls back to the
    environment's settings)."""
    global _cache
    _cache = KeyCache(keyring)
    return _cache


def cache() -> KeyCache:
    """The process's key cache for the fold (configured from the environment on first use)."""
    if _cache is None:
        return configure(keyring(Settings.from_env()))
    return _cache


def strip_data(envelope: Any) -> Any:
    """An envelope (dict) without its ``data``: what history keeps of an erased record."""
    if isinstance(envelope, dict):
        return {k: v for k, v in envelope.items() if k != "data"}
    return envelope
