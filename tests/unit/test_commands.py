"""Record commands turned into events (producers.commands), without I/O."""

from __future__ import annotations

import uuid

import pytest

from eventfold.errors import BadRequest
from producers.commands import (
    command_event_id,
    new_record_id,
    parse_if_match,
    record_event,
    tenant_created_event_id,
)


def test_command_event_id_is_deterministic_for_the_same_tenant_key_and_scope() -> None:
    a = command_event_id("acme", "key-1", "PUT /records/1")
    assert a == command_event_id("acme", "key-1", "PUT /records/1")
    assert uuid.UUID(a).version == 5


@pytest.mark.parametrize(
    "other",
    [
        ("globex", "key-1", "PUT /records/1"),
        ("acme", "key-2", "PUT /records/1"),
        ("acme", "key-1", "PATCH /records/1"),
        ("acme", "key-1", "PUT /records/2"),
    ],
)
def test_command_event_id_differs_across_tenants_keys_and_scopes(
    other: tuple[str, str, str],
) -> None:
    assert command_event_id("acme", "key-1", "PUT /records/1") != command_event_id(*other)


def test_command_event_id_separator_prevents_field_concatenation_collisions() -> None:
    assert command_event_id("ab", "c", "s") != command_event_id("a", "bc", "s")


def test_command_event_id_without_a_key_is_random() -> None:
    ids = {command_event_id("acme", None, "POST /records") for _ in range(20)}
    assert len(ids) == 20
    assert all(uuid.UUID(i).version == 4 for i in ids)


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_command_event_id_refuses_keys_of_bad_length(key: str) -> None:
    with pytest.raises(BadRequest):
        command_event_id("acme", key, "scope")


@pytest.mark.parametrize("key", ["k", "k" * 255])
def test_command_event_id_accepts_boundary_key_lengths(key: str) -> None:
    assert command_event_id("acme", key, "scope")


def test_new_record_id_is_stable_under_a_key_and_random_without() -> None:
    a = new_record_id("acme", "key-1", "orders")
    assert a == new_record_id("acme", "key-1", "orders")
    assert a != new_record_id("acme", "key-1", "invoices")
    assert a != new_record_id("globex", "key-1", "orders")
    assert a != command_event_id("acme", "key-1", "orders")
    assert new_record_id("acme", None, "orders") != new_record_id("acme", None, "orders")


def test_tenant_created_event_id_is_fixed() -> None:
    assert tenant_created_event_id("acme") == "tenant.created:acme"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ('"3"', 3),
        ('"0"', 0),
        (' "12" ', 12),
        ("7", 7),
    ],
)
def test_parse_if_match(header: str | None, expected: int | None) -> None:
    assert parse_if_match(header) == expected


@pytest.mark.parametrize(
    "header",
    ['W/"3"', '"-1"', '"abc"', '""', "", "*", '"3", "4"', '"1.5"', '"3 "'],
)
def test_parse_if_match_rejects_malformed_values(header: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_if_match(header)
    assert exc.value.status == 400


@pytest.mark.parametrize("header", ['"²"', '"①"'])
def test_parse_if_match_rejects_non_decimal_digit_characters(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_if_match(header)


def test_record_event_builds_a_stamped_record_envelope() -> None:
    ev = record_event(
        tenant="acme",
        event_id="e-1",
        event_type="record.patched",
        collection="orders",
        record_id="o-1",
        data={"a": None},
        expected_version=3,
        correlation="corr-1",
        actor="user:alice",
    )
    assert ev.subject == "orders/o-1"
    assert ev.model_extra == {"actor": "user:alice"}
    assert ev.tenant == "acme"
    assert ev.expectedversion == 3
    assert ev.correlationid == "corr-1"
    assert ev.time is not None
    assert ev.time.tzinfo is not None
    assert ev.data == {"a": None}
    assert ev.source == "eventfold/api"


@pytest.mark.parametrize("key", ["\udcff\udcfe", "a\ud800"])
def test_keys_that_are_not_text_are_refused_not_crashed_on(key: str) -> None:
    # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes.
    with pytest.raises(BadRequest, match="UTF-8"):
        command_event_id("acme", key, "PUT /records/1")
    with pytest.raises(BadRequest, match="UTF-8"):
        new_record_id("acme", key, "orders")
    assert command_event_id("acme", "é😀", "PUT /records/1")
