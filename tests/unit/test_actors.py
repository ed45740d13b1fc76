"""The ``actor`` extension: who wrote an event, never what the client claimed."""

from __future__ import annotations

import pytest

from eventfold import actors
from eventfold.auth import Principal, TokenVerifier, issue_token
from eventfold.envelope import CloudEvent, stamp
from eventfold.events import REGISTRY
from eventfold.eventtypes.names import is_custom
from eventfold.publisher import with_actor

SECRET = "s" * 32


def _event(**extra: object) -> CloudEvent:
    return CloudEvent.model_validate(
        {"specversion": "1.0", "id": "e-1", "source": "t", "type": "record.upserted", **extra}
    )


def test_a_token_acts_as_its_user_and_an_api_key_as_itself() -> None:
    token = issue_token(SECRET, tenant="acme", roles=["writer"], subject="bob")
    assert TokenVerifier(SECRET).verify(token).actor == "user:bob"
    key = Principal(subject="apikey:k1", tenant="acme", roles=frozenset(), kind="apikey")
    assert key.actor == "apikey:k1"
    # A token whose sub looks like a key id is still a user.
    assert Principal("apikey:k1", "acme", frozenset()).actor == "user:apikey:k1"


def test_stamp_replaces_a_client_sent_actor() -> None:
    forged = _event(actor="user:root")
    stamped = stamp(forged, tenant="acme", actor="apikey:k1")
    assert stamped.model_extra == {"actor": "apikey:k1"}
    assert b'"actor":"apikey:k1"' in stamped.to_json()


def test_with_actor_overwrites_and_keeps_events_already_stamped() -> None:
    mine = _event(actor="workflow:r1")
    forged = _event(actor="user:root")
    bare = _event()
    out = with_actor([mine, forged, bare], "workflow:r1")
    assert out[0] is mine
    assert [e.model_extra for e in out] == [{"actor": "workflow:r1"}] * 3


def test_resolve_prefers_the_explicit_actor_and_refuses_none() -> None:
    token = actors.current.set("user:alice")
    try:
        assert actors.resolve(None) == "user:alice"
        assert actors.resolve("integration:i1") == "integration:i1"
    finally:
        actors.current.reset(token)
    with pytest.raises(actors.MissingActor):
        actors.resolve(None)


def test_operator_defaults_to_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "ops-ann")
    assert actors.operator() == "operator:ops-ann"
    assert actors.operator("bob") == "operator:bob"


def test_every_built_in_type_is_in_a_reserved_namespace() -> None:
    # A built-in type outside them would be folded as a tenant's own (and rejected as
    # unregistered): tenant.operator_action was operator.action once.
    assert [name for name in REGISTRY if is_custom(name)] == []
