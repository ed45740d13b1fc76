"""Tenant event types' pure rules: names, schemas, upcasts, projections, admission."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from eventfold.envelope import EnvelopeInvalid, parse_event
from eventfold.eventtypes import ingest, names, schemas
from eventfold.eventtypes.definitions import TypeHistory, latest_shape
from eventfold.eventtypes.projection import Projection, ProjectionFailed, record_operation
from eventfold.eventtypes.upcast import Default, Drop, Rename, apply, implicit_defaults

T = "t_acme"
V1 = {
    "type": "object",
    "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["invoice_id", "amount"],
    "additionalProperties": False,
}
V2 = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string"},
        "total": {"type": "number"},
        "currency": {"type": "string", "default": "EUR"},
    },
    "required": ["invoice_id", "total", "currency"],
    "additionalProperties": False,
}
PROJECTION = {"collection": "invoices", "id": "/invoice_id", "op": "patch",
              "fields": {"status": {"const": "paid"}, "paid": "/total"}}  # fmt: skip


def history(**projections: Any) -> TypeHistory:
    h = TypeHistory("invoice.paid")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    h.extend({"type": "invoice.paid", "version": 1, "schema": V1, "compatibility": "backward",
              "projection": projections.get("v1"), "upcast": [], "created_at": at})  # fmt: skip
    h.extend({"type": "invoice.paid", "version": 2, "schema": V2, "compatibility": "backward",
              "projection": projections.get("v2"),
              "upcast": [{"op": "rename", "from": "/amount", "path": "/total"}],
              "created_at": at})  # fmt: skip
    return h


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("invoice.paid", True),
        ("shipment.delivered.late", True),
        ("a.b_c-d2", True),
        ("invoice", False),
        ("Invoice.paid", False),
        ("invoice..paid", False),
        ("1nvoice.paid", False),
        ("record.custom", False),
        ("tenant.x", False),
        ("workflow.x", False),
        ("apikey.x", False),
        ("webhook.x", False),
        ("integration.x", False),
        ("eventtype.x", False),
        ("a." + "b" * 130, False),
    ],
)
def test_type_names(name: str, ok: bool) -> None:
    assert (names.name_problem(name) is None) is ok
    assert names.is_custom(name) is ok


def test_dataschema_names_a_version_of_the_type() -> None:
    uri = names.schema_uri(T, "invoice.paid", 3)
    assert names.dataschema_version(uri, "invoice.paid", T) == 3
    assert names.dataschema_version("https://api.example" + uri, "invoice.paid", T) == 3
    assert names.dataschema_version("event-types/invoice.paid/versions/2", "invoice.paid", T) == 2
    for bad in (
        names.schema_uri(T, "invoice.sent", 1),
        names.schema_uri("t_other", "invoice.paid", 1),
        "/v1/tenants/t_acme/event-types/invoice.paid/versions/0",
        "https://schemas.example/invoice.json",
    ):
        with pytest.raises(ValueError, match=r"version|type|tenant"):
            names.dataschema_version(bad, "invoice.paid", T)


def test_schema_checks_point_at_the_problem() -> None:
    assert schemas.check_schema(V1) == []
    assert schemas.check_schema(True) == []
    errors = schemas.check_schema(
        {"type": "object", "properties": {"a": {"minimum": "zero"}, "b": {"$ref": "x.json"}}}
    )
    assert {e.path for e in errors} == {"/schema/properties/a/minimum", "/schema/properties/b/$ref"}
    assert [e.path for e in schemas.check_schema({"$ref": "#/$defs/nope"})] == ["/schema"]
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#"}
    assert [e.path for e in schemas.check_schema(draft7)] == ["/schema/$schema"]
    assert [e.path for e in schemas.check_schema([])] == ["/schema"]
    # A reference to itself is local, and fine; a remote one in a const is data, not a ref.
    assert schemas.check_schema({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}) == []
    assert schemas.check_schema({"const": {"$ref": "https://x.example"}}) == []


def test_validation_errors_are_pointers_into_the_event() -> None:
    v = schemas.compile_schema(V1)
    assert schemas.validate(v, {"invoice_id": "i", "amount": 1}, path="/3/data") == []
    errors = schemas.validate(v, {"invoice_id": 7, "amount": 1}, path="/3/data")
    assert [e.path for e in errors] == ["/3/data/invoice_id"]


def test_upcast_steps() -> None:
    data = {"amount": 5, "old": {"x": 1}, "keep": True}
    steps = [
        Rename(op="rename", **{"from": "/amount"}, path="/money/total"),
        Default(op="default", path="/currency", value="EUR"),
        Default(op="default", path="/keep", value=False),
        Drop(op="drop", path="/old/x"),
        Drop(op="drop", path="/absent"),
        Rename(op="rename", **{"from": "/absent"}, path="/other"),
    ]
    out = apply(data, steps)
    assert out == {"money": {"total": 5}, "old": {}, "keep": True, "currency": "EUR"}
    assert data == {"amount": 5, "old": {"x": 1}, "keep": True}  # untouched
    assert apply("not an object", steps) == "not an object"
    [step] = implicit_defaults(V1, V2)
    assert (step.path, step.value) == ("/currency", "EUR")


def test_projection_to_record_operations() -> None:
    p = Projection.model_validate(PROJECTION)
    op = record_operation(p, {"invoice_id": "inv-1", "total": 3, "note": "x"})
    assert (op.event_type, op.subject, op.data) == (
        "record.patched", "invoices/inv-1", {"status": "paid", "paid": 3},
    )  # fmt: skip
    whole = Projection.model_validate({"collection": "invoices", "id": "/n"})
    assert record_operation(whole, {"n": 7, "a": 1}).data == {"n": 7, "a": 1}
    assert record_operation(whole, {"n": 7, "a": 1}).event_type == "record.upserted"
    gone = Projection.model_validate({"collection": "invoices", "id": "/n", "op": "delete"})
    assert record_operation(gone, {"n": "x"}).data is None
    for bad in ({}, {"n": "has space"}, {"n": True}, {"n": None}):
        with pytest.raises(ProjectionFailed) as caught:
            record_operation(whole, bad)
        assert caught.value.error.path == "/data/n"
    with pytest.raises(ValueError, match="point inside data"):
        Projection.model_validate({"collection": "invoices", "id": ""})


def _event(data: Any, **extra: Any) -> Any:
    return parse_event(
        {"specversion": "1.0", "id": "e1", "source": "s", "type": "invoice.paid", "data": data,
         **extra}
    )  # fmt: skip


def test_admission_validates_the_named_version_and_stamps_the_fold() -> None:
    h = history(v2=PROJECTION)
    ev = ingest.admit(_event({"invoice_id": "i1", "total": 2, "currency": "USD"}), h, T)
    assert ev.dataschema == names.schema_uri(T, "invoice.paid", 2)
    assert (ev.model_extra or {})[ingest.FOLD_VERSION] == 2
    assert ev.subject == "invoices/i1"
    old = _event(
        {"invoice_id": "i2", "amount": 4}, dataschema=names.schema_uri(T, "invoice.paid", 1)
    )
    stamped = ingest.admit(old, h, T)
    assert stamped.dataschema.endswith("/versions/1")
    op = ingest.operation(stamped, h, T)
    assert op is not None
    assert (op.subject, op.data) == ("invoices/i2", {"status": "paid", "paid": 4})
    with pytest.raises(EnvelopeInvalid) as caught:
        ingest.admit(_event({"invoice_id": "i1", "amount": 2}), h, T)
    assert {e.path for e in caught.value.errors} == {"/data"}
    with pytest.raises(EnvelopeInvalid) as caught:
        ingest.admit(
            _event({"invoice_id": "i1", "total": 2, "currency": "X"}, subject="invoices/zz"), h, T
        )
    assert [e.path for e in caught.value.errors] == ["/subject"]
    # A version without projection folds nothing but the history.
    assert ingest.operation(ingest.admit(old, history(), T), history(), T) is None


def test_read_back_in_the_latest_shape() -> None:
    h = history()
    envelope = {"type": "invoice.paid", "data": {"invoice_id": "i", "amount": 1},
                "dataschema": names.schema_uri(T, "invoice.paid", 1)}  # fmt: skip
    lifted = latest_shape(envelope, h, T)
    assert lifted["data"] == {"invoice_id": "i", "total": 1, "currency": "EUR"}
    assert lifted["dataschema"].endswith("/versions/2")
    assert envelope["data"] == {"invoice_id": "i", "amount": 1}
    assert latest_shape(lifted, h, T) is lifted  # already the latest
