"""The schema registry's data validation (eventfold.events.validate_data)."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold.envelope import CloudEvent, EnvelopeInvalid, parse_event
from eventfold.events import REGISTRY, lookup, validate_data


def event(type_: str, data: Any = None, subject: str | None = None) -> CloudEvent:
    raw: dict[str, Any] = {"specversion": "1.0", "id": "e1", "source": "tests", "type": type_}
    if subject is not None:
        raw["subject"] = subject
    if data is not None:
        raw["data"] = data
    return parse_event(raw)


def error_paths(ev: CloudEvent, path: str = "") -> list[str]:
    with pytest.raises(EnvelopeInvalid) as exc:
        validate_data(ev, path=path)
    return [e.path for e in exc.value.errors]


def test_registry_holds_the_built_in_types() -> None:
    assert set(REGISTRY) >= {
        "tenant.created",
        "record.upserted",
        "record.patched",
        "record.deleted",
    }
    assert lookup("record.upserted") is REGISTRY["record.upserted"]
    assert lookup("record.unknown") is None


@pytest.mark.parametrize("prefix", ["", "/4"])
def test_unknown_type_is_an_error_at_type(prefix: str) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        validate_data(event("order.placed", {"a": 1}), path=prefix)
    assert [e.path for e in exc.value.errors] == [f"{prefix}/type"]
    assert "record.upserted" in exc.value.errors[0].message


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("record.upserted", {"a": 1, "nested": {"b": [1, 2]}}),
        ("record.upserted", {}),
        ("record.patched", {"a": None}),
        ("record.deleted", None),
        ("record.deleted", {}),
    ],
)
def test_valid_record_events_pass(type_: str, data: Any) -> None:
    validate_data(event(type_, data, subject="orders/ord-1"))


@pytest.mark.parametrize(
    "subject",
    [
        None,
        "",
        "orders",
        "orders/",
        "/ord-1",
        "Orders/ord-1",
        "1orders/ord-1",
        "orders/ord 1",
        "orders/a/b",
        "orders/" + "x" * 129,
        "o" * 64 + "/ord-1",
        "orders/ünï",
    ],
)
@pytest.mark.parametrize("type_", ["record.upserted", "record.patched", "record.deleted"])
def test_record_events_need_a_collection_slash_id_subject(type_: str, subject: Any) -> None:
    data = None if type_ == "record.deleted" else {"a": 1}
    if subject == "":
        ev = event(type_, data).model_copy(update={"subject": ""})
    else:
        ev = event(type_, data, subject=subject)
    assert error_paths(ev, "/0") == ["/0/subject"]


@pytest.mark.parametrize(
    "subject", ["a/b", "orders/ord-1", "o" * 63 + "/" + "x" * 128, "c_1/A.b_c~d:e-f"]
)
def test_boundary_subjects_are_valid(subject: str) -> None:
    validate_data(event("record.upserted", {"a": 1}, subject=subject))


@pytest.mark.parametrize("data", [[1], "doc", 3])
@pytest.mark.parametrize("type_", ["record.upserted", "record.patched"])
def test_record_data_must_be_an_object(type_: str, data: Any) -> None:
    assert error_paths(event(type_, data, subject="c/1"), "/0") == ["/0/data"]


def test_record_upserted_without_data_is_rejected() -> None:
    assert error_paths(event("record.upserted", None, subject="c/1")) == ["/data"]


@pytest.mark.parametrize("data", [{"a": 1}, [1], "x"])
def test_record_deleted_takes_no_data(data: Any) -> None:
    assert error_paths(event("record.deleted", data, subject="c/1"), "/1") == ["/1/data"]


def test_subject_and_data_errors_are_reported_together() -> None:
    assert error_paths(event("record.deleted", {"a": 1}, subject="bad"), "/0") == [
        "/0/subject",
        "/0/data",
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"id": "acme", "name": "Acme"},
        {"id": "abc", "name": "x"},
        {"id": "a" + "b" * 39, "name": "n" * 200},
        {"id": "t_1", "name": "T", "limits": {"requests_per_second": 0.5, "burst": 1}},
        {"id": "t_1", "name": "T", "limits": {}},
    ],
)
def test_valid_tenant_created_data_passes(data: dict[str, Any]) -> None:
    validate_data(event("tenant.created", data))


@pytest.mark.parametrize(
    ("data", "bad_paths"),
    [
        ({"name": "Acme"}, ["/0/data/id"]),
        ({"id": "acme"}, ["/0/data/name"]),
        ({"id": "ab", "name": "Acme"}, ["/0/data/id"]),
        ({"id": "a" * 41, "name": "Acme"}, ["/0/data/id"]),
        ({"id": "Acme", "name": "Acme"}, ["/0/data/id"]),
        ({"id": "1acme", "name": "Acme"}, ["/0/data/id"]),
        ({"id": "ac-me", "name": "Acme"}, ["/0/data/id"]),
        ({"id": 123, "name": "Acme"}, ["/0/data/id"]),
        ({"id": "acme", "name": ""}, ["/0/data/name"]),
        ({"id": "acme", "name": "n" * 201}, ["/0/data/name"]),
        ({"id": "acme", "name": "A", "limits": {"burst": 0}}, ["/0/data/limits/burst"]),
        (
            {"id": "acme", "name": "A", "limits": {"requests_per_second": 0}},
            ["/0/data/limits/requests_per_second"],
        ),
        (
            {"id": "acme", "name": "A", "limits": {"requests_per_second": -1}},
            ["/0/data/limits/requests_per_second"],
        ),
        ({"id": "acme", "name": "A", "plan": "gold"}, ["/0/data/plan"]),
        ({"id": "acme", "name": "A", "limits": {"burst": 5, "x": 1}}, ["/0/data/limits/x"]),
        ({"id": "acme", "name": "A", "a/b~c": 1}, ["/0/data/a~1b~0c"]),
        ("acme", ["/0/data"]),
    ],
)
def test_invalid_tenant_created_data_is_reported_by_pointer(
    data: Any, bad_paths: list[str]
) -> None:
    assert error_paths(event("tenant.created", data), "/0") == bad_paths
