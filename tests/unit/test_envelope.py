"""CloudEvents 1.0 envelope parsing (eventfold.envelope)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventfold.envelope import (
    CloudEvent,
    EnvelopeInvalid,
    decode_event,
    is_known_attribute,
    parse_event,
    replaced,
    stamp,
)
from eventfold.errors import FieldError

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "ev-1",
        "source": "tests",
        "type": "record.upserted",
    } | extra


def paths(exc: pytest.ExceptionInfo[EnvelopeInvalid]) -> list[str]:
    return [e.path for e in exc.value.errors]


def test_minimal_event_parses() -> None:
    ev = parse_event(minimal())
    assert ev.specversion == "1.0"
    assert ev.id == "ev-1"
    assert ev.source == "tests"
    assert ev.type == "record.upserted"
    assert ev.subject is None
    assert ev.time is None
    assert ev.data is None


def test_every_named_optional_attribute_parses() -> None:
    ev = parse_event(
        minimal(
            subject="c/1",
            time="2024-05-06T07:08:09Z",
            datacontenttype="application/json",
            dataschema="https://eventfold.dev/schemas/record.upserted/v1.json",
            data={"a": 1},
            tenant="acme",
            correlationid="corr",
            causationid="cause",
            expectedversion=0,
        )
    )
    assert ev.time == NOW
    assert ev.expectedversion == 0
    assert ev.tenant == "acme"
    assert ev.data == {"a": 1}


def test_all_missing_required_attributes_are_reported_at_once() -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event({})
    assert sorted(paths(exc)) == ["/id", "/source", "/specversion", "/type"]


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type"])
def test_each_required_attribute_is_required(missing: str) -> None:
    raw = minimal()
    del raw[missing]
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(raw)
    assert paths(exc) == [f"/{missing}"]


@pytest.mark.parametrize("version", ["0.3", "1", "1.0.0", 1.0, None, ""])
def test_bad_specversion_is_rejected(version: Any) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(minimal(specversion=version))
    assert paths(exc) == ["/specversion"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", ""),
        ("id", "x" * 257),
        ("id", "a\nb"),
        ("source", ""),
        ("type", "Record.Upserted"),
        ("type", "1abc"),
        ("type", ""),
        ("subject", ""),
        ("subject", "c/\x00"),
        ("expectedversion", -1),
        ("expectedversion", "three"),
        ("correlationid", "a\tb"),
    ],
)
def test_invalid_attribute_values_are_reported_at_their_path(field: str, value: Any) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(minimal(**{field: value}))
    assert paths(exc) == [f"/{field}"]


@pytest.mark.parametrize("naive", ["2024-05-06T07:08:09", "2024-05-06 07:08:09"])
def test_naive_time_is_rejected(naive: str) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(minimal(time=naive))
    assert paths(exc) == ["/time"]
    assert "offset" in exc.value.errors[0].message


def test_time_with_an_offset_is_accepted_and_keeps_the_instant() -> None:
    ev = parse_event(minimal(time="2024-05-06T09:08:09+02:00"))
    assert ev.time == NOW
    assert ev.time is not None
    assert ev.time.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("name", "value"),
    [("ext", "v"), ("a1", 3), ("flag", True), ("x" * 20, "v"), ("0", "digit name")],
)
def test_valid_extension_attributes_are_kept(name: str, value: Any) -> None:
    ev = parse_event(minimal(**{name: value}))
    assert ev.model_extra == {name: value}
    assert ev.to_dict()[name] == value
    assert not is_known_attribute(name)


@pytest.mark.parametrize(
    "name", ["Upper", "with-dash", "under_score", "x" * 21, "dotted.name", "ünï"]
)
def test_extension_attribute_names_must_be_lowercase_alphanumeric_up_to_20(name: str) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(minimal(**{name: "v"}), path="/2")
    assert paths(exc) == ["/2"]
    assert name in exc.value.errors[0].message


@pytest.mark.parametrize("value", [1.5, None, [1], {"a": 1}])
def test_extension_attribute_values_must_be_string_integer_or_boolean(value: Any) -> None:
    with pytest.raises(EnvelopeInvalid):
        parse_event(minimal(ext=value))


@pytest.mark.parametrize("name", ["specversion", "data", "tenant", "expectedversion"])
def test_named_attributes_are_known(name: str) -> None:
    assert is_known_attribute(name)


def test_error_paths_are_json_pointers_under_the_prefix() -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(minimal(specversion="0.3", expectedversion=-2), path="/7")
    assert sorted(paths(exc)) == ["/7/expectedversion", "/7/specversion"]
    assert all(isinstance(e, FieldError) for e in exc.value.errors)
    assert "/7/specversion" in str(exc.value)


@pytest.mark.parametrize("raw", [[], "event", 42, None])
def test_a_non_object_is_an_error_at_the_prefix(raw: Any) -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event(raw, path="/0")
    assert paths(exc) == ["/0"]


def test_root_error_without_prefix_is_the_root_pointer() -> None:
    with pytest.raises(EnvelopeInvalid) as exc:
        parse_event("nope")
    assert paths(exc) == ["/"]


def test_stamp_sets_tenant_and_time_when_absent() -> None:
    ev = stamp(parse_event(minimal()), tenant="acme", now=NOW)
    assert ev.tenant == "acme"
    assert ev.time == NOW


def test_stamp_keeps_a_client_time() -> None:
    client_time = datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    ev = stamp(parse_event(minimal(time=client_time.isoformat())), tenant="acme", now=NOW)
    assert ev.time == client_time


def test_stamp_uses_the_path_tenant_over_a_client_supplied_one() -> None:
    ev = stamp(parse_event(minimal(tenant="other")), tenant="acme", now=NOW)
    assert ev.tenant == "acme"


def test_stamp_without_now_uses_an_aware_current_time() -> None:
    before = datetime.now(UTC)
    ev = stamp(parse_event(minimal()), tenant="acme")
    assert ev.time is not None
    assert ev.time.tzinfo is not None
    assert before <= ev.time <= datetime.now(UTC)


def test_stamp_sets_a_correlation_id_only_when_absent() -> None:
    ev = stamp(parse_event(minimal()), tenant="acme", now=NOW, correlation="req-1")
    assert ev.correlationid == "req-1"
    kept = stamp(parse_event(minimal(correlationid="c-0")), tenant="acme", correlation="req-1")
    assert kept.correlationid == "c-0"
    assert stamp(parse_event(minimal()), tenant="acme", correlation=None).correlationid is None


def test_stamp_returns_a_new_event_and_leaves_the_original() -> None:
    original = parse_event(minimal())
    stamped = stamp(original, tenant="acme", now=NOW)
    assert stamped is not original
    assert original.tenant is None
    assert original.time is None


def test_to_dict_omits_unset_attributes() -> None:
    assert parse_event(minimal()).to_dict() == minimal()


def test_to_dict_keeps_nulls_inside_data() -> None:
    # A merge patch's nulls are removals: they must survive serialisation.
    ev = parse_event(minimal(type="record.patched", data={"a": None, "b": {"c": None}}))
    assert ev.to_dict()["data"] == {"a": None, "b": {"c": None}}


@pytest.mark.parametrize("data", [0, False, "", [], {}])
def test_to_dict_keeps_falsy_data(data: Any) -> None:
    assert parse_event(minimal(data=data)).to_dict()["data"] == data


def test_round_trip_through_to_json_and_decode_event() -> None:
    ev = stamp(
        parse_event(
            minimal(
                subject="c/1",
                data={"a": [1, None, {"b": "ü"}], "n": None},
                correlationid="corr",
                expectedversion=3,
                traceparent="00-abc",
                retries=2,
            )
        ),
        tenant="acme",
        now=NOW,
    )
    back = decode_event(ev.to_json())
    assert isinstance(back, CloudEvent)
    assert back == ev
    assert back.to_dict() == ev.to_dict()
    assert orjson.loads(ev.to_json())["time"] in (
        "2024-05-06T07:08:09Z",
        "2024-05-06T07:08:09+00:00",
    )


def test_events_are_immutable() -> None:
    ev = parse_event(minimal())
    with pytest.raises(ValueError, match="frozen"):
        ev.id = "other"  # type: ignore[misc]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    data=_json_values,
    offset_minutes=st.integers(min_value=-720, max_value=720),
    micros=st.integers(min_value=0, max_value=999_999),
    subject=st.none() | st.just("c/1"),
)
def test_to_json_writes_the_bytes_of_the_dict_form(
    data: Any, offset_minutes: int, micros: int, subject: str | None
) -> None:
    # to_json serialises in pydantic's one pass; the log's bytes must stay those of
    # the dict form (dedup records and history rows compare and store them).
    at = datetime(2024, 5, 6, 7, 8, 9, micros, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    ev = parse_event(minimal(data=data, subject=subject, time=at.isoformat(), trace="x", n=2))
    assert ev.to_json() == orjson.dumps(ev.to_dict())


@settings(max_examples=200, deadline=None)
@given(
    data=_json_values,
    new_data=_json_values,
    extensions=st.dictionaries(
        st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True), st.text(), max_size=3
    ),
    subject=st.none() | st.just("c/1"),
)
def test_replaced_makes_what_model_copy_makes(
    data: Any, new_data: Any, extensions: dict[str, str], subject: str | None
) -> None:
    # replaced() builds the copy pydantic's model_copy builds, without its cost; this
    # holds them equal (a pydantic upgrade that changes the model's inner state fails here).
    extensions = {k: v for k, v in extensions.items() if not is_known_attribute(k)}
    ev = parse_event(minimal(data=data, subject=subject, trace="x", n=2))
    ours = replaced(ev, new_data, **extensions)
    theirs = ev.model_copy(update={"data": new_data, **extensions})
    assert ours == theirs
    assert ours.to_json() == theirs.to_json()
    assert ours.model_extra == theirs.model_extra
    assert ours.model_fields_set == theirs.model_fields_set
    assert ev.data == data  # the original is left as it was
    with pytest.raises(ValueError, match="frozen"):
        ours.id = "other"  # type: ignore[misc]
