"""Secrets at rest: AES-256-GCM sealing with rotatable keys.

Webhook signing secrets and integration credentials are stored sealed, never
in plain text (not in PostgreSQL, not in the Kafka log). A sealed value reads
``v1.<key id>.<base64url(nonce || ciphertext || tag)>``; the key id picks the
key that opens it, so keys rotate by putting a new key first: new values are
sealed with it and old ones still open with the keys after it.

Keys come from ``EVENTFOLD_SECRET_KEYS`` (``id:base64key,...``, 32-byte keys,
the first one seals) or, in development, a key file made on first use in
``var/`` (like the dev JWT secret). The ``purpose`` passed to seal/open is
bound as associated data, so a value sealed for one place cannot be moved to
another (a webhook secret pasted into an integration's headers fails to open).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventfold.errors import PermanentError
from eventfold.secretfiles import read_or_create

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE_BYTES = 12


@functools.lru_cache(maxsize=16)
def _cipher(key: bytes) -> AESGCM:
    # Made once per key: the data keys of personal records are opened by the thousand.
    return AESGCM(key)


class SealError(PermanentError):
    """A sealed value that no configured key opens, or a malformed key setting."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys that open sealed values; ``keys[0]`` seals new ones."""

    keys: tuple[tuple[str, bytes], ...]
    #: Each key's cipher by its id, made once: data keys are opened by the thousand.
    _ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise SealError("a keyring needs at least one key")
        for key_id, key in self.keys:
            if not _KEY_ID.fullmatch(key_id):
                raise SealError(f"key id {key_id!r} must match {_KEY_ID.pattern}")
            if len(key) != 32:
                raise SealError(f"key {key_id!r} must be 32 bytes (AES-256)")
        ciphers = {key_id: _cipher(key) for key_id, key in self.keys}
        object.__setattr__(self, "_ciphers", ciphers)  # frozen: set as dataclasses do

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """Read ``id:base64key[,id:base64key...]`` (the ``EVENTFOLD_SECRET_KEYS`` format)."""
        keys: list[tuple[str, bytes]] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key_id, sep, encoded = part.partition(":")
            if not sep:
                raise SealError("EVENTFOLD_SECRET_KEYS entries are id:base64key")
            try:
                keys.append((key_id, base64.b64decode(encoded, validate=True)))
            except binascii.Error:
                raise SealError(f"key {key_id!r} is not base64") from None
        return cls(tuple(keys))

    def seal(self, plaintext: bytes, *, purpose: str) -> str:
        """Encrypt ``plaintext`` for ``purpose`` with the current key."""
        key_id, key = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = _cipher(key).encrypt(nonce, plaintext, purpose.encode())
        return f"v1.{key_id}." + pybase64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, value: str, *, purpose: str) -> bytes:
        """Decrypt a value sealed for ``purpose``; :class:`SealError` when it cannot."""
        version, _, rest = value.partition(".")
        key_id, _, payload = rest.partition(".")
        if version != "v1" or not payload:
            raise SealError("not a sealed value")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealError(f"no key {key_id!r} configured (was it rotated out too early?)")
        try:
            raw = pybase64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], purpose.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError("the sealed value does not open (wrong key or tampered)") from None

    def needs_reseal(self, value: str) -> bool:
        """True when ``value`` was sealed with a key other than the current one."""
        return value.split(".", 2)[1:2] != [self.keys[0][0]]


def new_key_spec(key_id: str = "k1") -> str:
    """A fresh ``id:base64key`` entry for ``EVENTFOLD_SECRET_KEYS``."""
    return f"{key_id}:" + base64.b64encode(secrets.token_bytes(32)).decode()


def dev_keyring(home: Path) -> Keyring:
    """A per-checkout key kept in ``var/secret-keys`` so every local process agrees.

    Production sets ``EVENTFOLD_SECRET_KEYS``; this spares a newcomer the step.
    """
    return Keyring.parse(read_or_create(home / "var" / "secret-keys", lambda: new_key_spec("dev1")))


class KeySettings(Protocol):
    """What :func:`keyring` reads of :class:`eventfold.settings.Settings` (which checks the
    keys with :meth:`Keyring.parse` when it loads them: this module is below it)."""

    @property
    def secret_keys(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def home(self) -> Path: ...


def keyring(settings: KeySettings) -> Keyring:
    """The process's keyring: ``EVENTFOLD_SECRET_KEYS`` (or its file), else the dev key.

    Production never makes a key of its own: each process (container) would seal
    with a different one, and nothing sealed could be opened elsewhere or later.
    """
    if settings.secret_keys:
        return Keyring.parse(settings.secret_keys)
    if settings.mode != "dev":
        raise SealError("EVENTFOLD_SECRET_KEYS is required in production mode")
    return dev_keyring(settings.home)
