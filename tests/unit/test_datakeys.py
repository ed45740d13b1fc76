"""Data keys (pure): what encryption keeps in clear, and what it binds the ciphertext to."""

from __future__ import annotations

import secrets

import orjson
import pytest

from eventfold.datakeys import (
    DataKey,
    DataKeyError,
    decrypt,
    encrypt,
    erased,
    is_encrypted,
    nonces,
    sealed_json,
    strip_data,
)
from eventfold.envelope import CloudEvent

KEY = DataKey.of("dk_test", secrets.token_bytes(32))


def event(**changes: object) -> CloudEvent:
    doc = {
        "specversion": "1.0", "id": "e1", "source": "test", "type": "record.upserted",
        "subject": "customers/c1", "tenant": "acme", "data": {"name": "Ada", "n": [1, 2]},
        "actor": "user:ann", **changes,
    }  # fmt: skip
    return CloudEvent.model_validate(doc)


def test_encrypted_data_names_its_key_and_opens_to_the_same_document() -> None:
    sealed = encrypt(event(), KEY)
    assert is_encrypted(sealed)
    assert not is_encrypted(event())
    assert (sealed.model_extra or {})["datakey"] == "dk_test"
    assert isinstance(sealed.data, str)
    assert b"Ada" not in sealed.to_json()
    # Everything but the data stays in clear (history, routing, audit).
    assert (sealed.type, sealed.subject, sealed.tenant) == (
        "record.upserted",
        "customers/c1",
        "acme",
    )
    assert (sealed.model_extra or {})["actor"] == "user:ann"
    assert decrypt(CloudEvent.model_validate(orjson.loads(sealed.to_json())), KEY).data == {
        "name": "Ada",
        "n": [1, 2],
    }


@pytest.mark.parametrize(
    "moved",
    [{"subject": "customers/c2"}, {"tenant": "other"}, {"id": "e2"}, {"type": "record.patched"}],
)
def test_a_ciphertext_moved_to_another_event_does_not_open(moved: dict[str, str]) -> None:
    sealed = encrypt(event(), KEY)
    elsewhere = sealed.model_copy(update=moved)
    with pytest.raises(DataKeyError, match="does not open"):
        decrypt(elsewhere, KEY)


def test_a_wrong_key_or_tampered_data_does_not_open() -> None:
    sealed = encrypt(event(), KEY)
    with pytest.raises(DataKeyError):
        decrypt(sealed, DataKey.of("dk_other", secrets.token_bytes(32)))
    assert isinstance(sealed.data, str)
    with pytest.raises(DataKeyError):
        decrypt(sealed.model_copy(update={"data": sealed.data[:-2] + "xx"}), KEY)
    with pytest.raises(DataKeyError, match="not a string"):
        decrypt(sealed.model_copy(update={"data": {"a": 1}}), KEY)


def test_an_erased_event_keeps_everything_but_its_data() -> None:
    gone = erased(encrypt(event(), KEY))
    assert gone.data is None
    assert "data" not in gone.to_dict()
    assert gone.to_dict()["datakey"] == "dk_test"
    assert strip_data({"id": "e1", "data": {"x": 1}}) == {"id": "e1"}


def test_a_publish_draws_a_distinct_nonce_per_event() -> None:
    drawn = nonces(1000)
    assert len(drawn) == 1000
    assert {len(n) for n in drawn} == {12}
    assert len(set(drawn)) == 1000
    assert nonces(0) == []
    # Given nonces are the ones used: the same nonce twice makes the same ciphertext.
    one, other = encrypt(event(), KEY, drawn[0]), encrypt(event(), KEY, drawn[0])
    assert one.data == other.data != encrypt(event(), KEY, drawn[1]).data
    assert decrypt(one, KEY).data == {"name": "Ada", "n": [1, 2]}


def test_the_sealed_json_is_the_encrypted_event_serialised() -> None:
    # The gateway writes the log's bytes without building the encrypted event.
    nonce = nonces(1)[0]
    made = sealed_json(event(), KEY, nonce)
    assert orjson.loads(made) == orjson.loads(encrypt(event(), KEY, nonce).to_json())
    logged = CloudEvent.model_validate(orjson.loads(made))
    assert decrypt(logged, KEY).data == {"name": "Ada", "n": [1, 2]}
    assert b"Ada" not in made
