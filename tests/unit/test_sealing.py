"""AES-GCM sealing of secrets at rest: round trip, rotation, purpose binding."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventfold.sealing import Keyring, SealError, dev_keyring, new_key_spec


def test_a_sealed_value_opens_and_does_not_show_the_plaintext() -> None:
    ring = Keyring.parse(new_key_spec("a"))
    sealed = ring.seal(b"Bearer top-secret", purpose="integration.headers")
    assert "top-secret" not in sealed
    assert sealed.startswith("v1.a.")
    assert ring.open(sealed, purpose="integration.headers") == b"Bearer top-secret"


def test_each_seal_uses_a_fresh_nonce() -> None:
    ring = Keyring.parse(new_key_spec())
    assert ring.seal(b"x", purpose="p") != ring.seal(b"x", purpose="p")


def test_rotation_opens_old_values_and_seals_with_the_new_key() -> None:
    old = new_key_spec("old")
    before = Keyring.parse(old).seal(b"s", purpose="p")
    rotated = Keyring.parse(f"{new_key_spec('new')},{old}")
    assert rotated.open(before, purpose="p") == b"s"
    assert rotated.needs_reseal(before)
    assert not rotated.needs_reseal(rotated.seal(b"s", purpose="p"))


def test_a_value_sealed_for_another_purpose_does_not_open() -> None:
    ring = Keyring.parse(new_key_spec())
    with pytest.raises(SealError):
        ring.open(ring.seal(b"s", purpose="webhook.secret"), purpose="integration.headers")


@pytest.mark.parametrize(
    "value", ["", "v1.k1.", "v2.k1.AAAA", "v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
)
def test_garbage_and_tampering_raise_seal_error(value: str) -> None:
    with pytest.raises(SealError):
        Keyring.parse(new_key_spec("k1")).open(value, purpose="p")


def test_an_unknown_key_id_is_named() -> None:
    sealed = Keyring.parse(new_key_spec("gone")).seal(b"s", purpose="p")
    with pytest.raises(SealError, match="gone"):
        Keyring.parse(new_key_spec("k1")).open(sealed, purpose="p")


@pytest.mark.parametrize("spec", ["k1", "k1:not base64", "k1:QUFB", "bad id!:" + "A" * 44])
def test_bad_key_settings_are_refused(spec: str) -> None:
    with pytest.raises(SealError):
        Keyring.parse(spec)


def test_the_dev_keyring_is_made_once_and_shared(tmp_path: Path) -> None:
    first = dev_keyring(tmp_path)
    assert dev_keyring(tmp_path) == first
    assert (tmp_path / "var" / "secret-keys").stat().st_mode & 0o077 == 0
