"""Identifier rules from CONTRACT.md (eventfold.ids)."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold.errors import ValidationFailed
from eventfold.ids import check, is_valid, split_subject, tenant_role, tenant_schema

HOSTILE = [
    None,
    "",
    "a;drop",
    "a; drop schema x",
    "../x",
    "a/b",
    'a"b',
    "a'b",
    "a b",
    "a\n",
    "abc\n",
    "\nabc",
    "ünïcode",
    "\u0430bc",  # Cyrillic a
    "abc\x00",
    "a*",
    "%61bc",
    123,
    b"abc",
    ["abc"],
]

TENANT_CASES = [
    ("ab", False),
    ("abc", True),
    ("a" * 40, True),
    ("a" * 41, False),
    ("acme_2", True),
    ("a__", False),
    ("acme__verify", False),
    ("a_b_c", True),
    ("abc_", True),
    ("ab__", False),
    ("a" * 39 + "_", True),
    ("a" * 39 + "__", False),
    ("pg_catalog", True),
    ("Acme", False),
    ("acmE", False),
    ("1acme", False),
    ("_acme", False),
    ("ac-me", False),
    ("ac.me", False),
]

COLLECTION_CASES = [
    ("a", True),
    ("a" * 63, True),
    ("a" * 64, False),
    ("orders_2024", True),
    ("Orders", False),
    ("9orders", False),
    ("_orders", False),
    ("or-ders", False),
]

RECORD_ID_CASES = [
    ("a", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("A.b_c~d:e-f09", True),
    ("2024-01-01T00:00:00", True),
    ("..", True),  # valid data; it never becomes a path
    ("a/b", False),
    ("a b", False),
    ("a?b", False),
    ("a%2Fb", False),
    ("a+b", False),
]


@pytest.mark.parametrize(("value", "ok"), TENANT_CASES)
def test_tenant_id_pattern(value: str, ok: bool) -> None:
    assert is_valid("tenant", value) is ok


@pytest.mark.parametrize(("value", "ok"), COLLECTION_CASES)
def test_collection_pattern(value: str, ok: bool) -> None:
    assert is_valid("collection", value) is ok


@pytest.mark.parametrize(("value", "ok"), RECORD_ID_CASES)
def test_record_id_pattern(value: str, ok: bool) -> None:
    assert is_valid("id", value) is ok


@pytest.mark.parametrize("kind", ["tenant", "collection", "id"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_invalid(kind: str, value: Any) -> None:
    assert not is_valid(kind, value)
    with pytest.raises(ValidationFailed):
        check(kind, value)


@pytest.mark.parametrize(("kind", "value"), [("tenant", "acme"), ("collection", "c"), ("id", "1")])
def test_check_returns_a_valid_value(kind: str, value: str) -> None:
    assert check(kind, value) == value


def test_check_error_is_422_with_the_pattern_at_the_default_path() -> None:
    with pytest.raises(ValidationFailed) as exc:
        check("tenant", "Bad")
    assert exc.value.status == 422
    assert [e.as_dict() for e in exc.value.errors] == [
        {
            "path": "/tenant",
            "message": "must match ^[a-z][a-z0-9_]{2,39}$ without two underscores in a row",
        }
    ]


def test_check_error_uses_a_given_path() -> None:
    with pytest.raises(ValidationFailed) as exc:
        check("collection", "Bad", path="/data/collection")
    assert exc.value.errors[0].path == "/data/collection"


@pytest.mark.parametrize(
    ("tenant", "schema"),
    [("acme", '"t_acme"'), ("pg_catalog", '"t_pg_catalog"'), ("public", '"t_public"')],
)
def test_tenant_schema_is_prefixed_and_quoted(tenant: str, schema: str) -> None:
    assert tenant_schema(tenant) == schema


@pytest.mark.parametrize("tenant", [*HOSTILE, "ab", "A" * 3, 'acme"; drop'])
def test_tenant_schema_refuses_invalid_tenants(tenant: Any) -> None:
    with pytest.raises(ValidationFailed):
        tenant_schema(tenant)


@pytest.mark.parametrize(
    ("tenant", "role"),
    [
        ("acme", '"ef_t_acme"'),
        ("pg_catalog", '"ef_t_pg_catalog"'),
        ("eventfold", '"ef_t_eventfold"'),
    ],
)
def test_tenant_role_is_prefixed_and_quoted(tenant: str, role: str) -> None:
    assert tenant_role(tenant) == role


def test_tenant_role_fits_postgres_identifier_limit() -> None:
    assert len(tenant_role("a" * 40).strip('"')) <= 63


@pytest.mark.parametrize("tenant", [*HOSTILE, "ab", "A" * 3, 'acme"; drop', "*", "acme\\"])
def test_tenant_role_refuses_invalid_tenants(tenant: Any) -> None:
    with pytest.raises(ValidationFailed):
        tenant_role(tenant)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("orders/ord-1", ("orders", "ord-1")),
        ("a/b", ("a", "b")),
        ("c_1/A.b~c:d", ("c_1", "A.b~c:d")),
    ],
)
def test_split_subject(subject: str, expected: tuple[str, str]) -> None:
    assert split_subject(subject) == expected


@pytest.mark.parametrize(
    "subject",
    ["", "orders", "orders/", "/ord-1", "orders/a/b", "Orders/1", "orders/a b", "../x", "a;drop/1"],
)
def test_split_subject_rejects_malformed_subjects(subject: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        split_subject(subject)
    assert [e.path for e in exc.value.errors] == ["/subject"]
