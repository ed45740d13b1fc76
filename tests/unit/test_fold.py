"""The record fold (eventfold.fold): pure, deterministic, versioned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventfold.fold import APPLIED, RECORD_TYPES, Record, apply, live_version

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def test_record_types_are_the_three_record_events() -> None:
    assert frozenset({"record.upserted", "record.patched", "record.deleted"}) == RECORD_TYPES


def test_upsert_creates_a_record_at_version_1_with_times_from_the_event() -> None:
    rec, outcome = apply(None, "record.upserted", {"a": 1}, at=at(5))
    assert outcome == APPLIED
    assert rec == Record(version=1, data={"a": 1}, created_at=at(5), updated_at=at(5))
    assert rec.live


def test_upsert_replaces_the_whole_document_and_keeps_created_at() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1, "b": 2}, at=at(1))
    rec, outcome = apply(rec, "record.upserted", {"c": 3}, at=at(2))
    assert outcome.status == "applied"
    assert rec is not None
    assert rec.data == {"c": 3}
    assert rec.version == 2
    assert rec.created_at == at(1)
    assert rec.updated_at == at(2)


def test_patch_merges_and_keeps_created_at() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1, "b": {"c": 1, "d": 2}}, at=at(1))
    rec, outcome = apply(rec, "record.patched", {"a": None, "b": {"c": 9}}, at=at(7))
    assert outcome.status == "applied"
    assert rec == Record(2, {"b": {"c": 9, "d": 2}}, created_at=at(1), updated_at=at(7))


def test_delete_leaves_a_tombstone_that_keeps_the_version() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1}, at=at(1))
    rec, outcome = apply(rec, "record.deleted", None, at=at(2))
    assert outcome.status == "applied"
    assert rec is not None
    assert rec.data is None
    assert not rec.live
    assert rec.version == 2
    assert rec.updated_at == at(2)
    assert live_version(rec) == 0


def test_recreate_after_delete_continues_counting_with_a_new_created_at() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1}, at=at(1))
    rec, _ = apply(rec, "record.deleted", None, at=at(2))
    rec, outcome = apply(rec, "record.upserted", {"b": 2}, at=at(3))
    assert outcome.status == "applied"
    assert rec == Record(3, {"b": 2}, created_at=at(3), updated_at=at(3))


@pytest.mark.parametrize("event_type", ["record.patched", "record.deleted"])
def test_patch_or_delete_of_an_absent_record_is_rejected(event_type: str) -> None:
    rec, outcome = apply(None, event_type, {}, at=at(1))
    assert rec is None
    assert outcome.status == "rejected"
    assert outcome.reason == "record does not exist"


@pytest.mark.parametrize("event_type", ["record.patched", "record.deleted"])
def test_patch_or_delete_of_a_deleted_record_is_rejected_and_keeps_the_tombstone(
    event_type: str,
) -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1}, at=at(1))
    tomb, _ = apply(rec, "record.deleted", None, at=at(2))
    after, outcome = apply(tomb, event_type, {}, at=at(3))
    assert after == tomb
    assert outcome.status == "rejected"
    assert outcome.reason


@pytest.mark.parametrize(
    ("history", "expected_version", "event_type", "applied"),
    [
        ([], 0, "record.upserted", True),
        ([], 1, "record.upserted", False),
        ([], 0, "record.patched", False),  # version matches, but nothing to patch
        (["record.upserted"], 1, "record.upserted", True),
        (["record.upserted"], 0, "record.upserted", False),
        (["record.upserted"], 2, "record.upserted", False),
        (["record.upserted"], 1, "record.patched", True),
        (["record.upserted"], 1, "record.deleted", True),
        (["record.upserted"], 0, "record.deleted", False),
        # A deleted record (tombstone at version 2) counts as version 0.
        (["record.upserted", "record.deleted"], 0, "record.upserted", True),
        (["record.upserted", "record.deleted"], 2, "record.upserted", False),
        (["record.upserted", "record.deleted"], 1, "record.upserted", False),
    ],
)
def test_expected_version_makes_a_write_conditional(
    history: list[str], expected_version: int, event_type: str, applied: bool
) -> None:
    rec: Record | None = None
    for i, etype in enumerate(history):
        rec, outcome = apply(rec, etype, {"n": i}, at=at(i))
        assert outcome.status == "applied"
    after, outcome = apply(rec, event_type, {"x": 1}, at=at(99), expected_version=expected_version)
    if applied:
        assert outcome.status == "applied"
        assert after is not None
        assert after.version == (rec.version if rec else 0) + 1
    else:
        assert outcome.status == "rejected"
        assert outcome.reason
        assert after == rec


def test_version_mismatch_reason_names_both_versions() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1}, at=at(1))
    after, outcome = apply(rec, "record.patched", {"a": 2}, at=at(2), expected_version=5)
    assert after is rec
    assert outcome.status == "rejected"
    assert outcome.reason is not None
    assert "5" in outcome.reason
    assert "1" in outcome.reason


def test_unknown_type_on_a_live_record_raises_value_error() -> None:
    rec, _ = apply(None, "record.upserted", {"a": 1}, at=at(1))
    with pytest.raises(ValueError, match="not a record event type"):
        apply(rec, "record.renamed", {}, at=at(2))


def test_fold_does_not_mutate_event_data_or_previous_state() -> None:
    data = {"a": {"b": 1}}
    rec, _ = apply(None, "record.upserted", data, at=at(1))
    patch = {"a": {"b": None, "c": 2}}
    rec2, _ = apply(rec, "record.patched", patch, at=at(2))
    assert data == {"a": {"b": 1}}
    assert patch == {"a": {"b": None, "c": 2}}
    assert rec is not None
    assert rec.data == {"a": {"b": 1}}
    assert rec2 is not None
    assert rec2.data == {"a": {"c": 2}}


def test_upsert_with_no_data_stores_an_empty_document() -> None:
    rec, outcome = apply(None, "record.upserted", None, at=at(1))
    assert outcome.status == "applied"
    assert rec is not None
    assert rec.data == {}
    assert rec.live


# --- property: the fold equals a tiny independent reference model -----------------------


def reference_fold(ops: list[tuple[str, Any, int | None]]) -> list[tuple[dict | None, int, str]]:
    """A dict-based model: after each op, (document or None, version counter, status)."""
    model: dict[str, Any] = {"doc": None, "version": 0, "exists": False}

    def merge(target: Any, patch: Any) -> Any:
        if not isinstance(patch, dict):
            return patch
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(out.get(k), v)
        return out

    trace = []
    for etype, data, expected in ops:
        current = model["version"] if model["exists"] else 0
        ok = expected is None or expected == current
        if ok and etype != "record.upserted" and not model["exists"]:
            ok = False
        if ok:
            model["version"] += 1
            if etype == "record.upserted":
                model["doc"], model["exists"] = dict(data), True
            elif etype == "record.patched":
                model["doc"] = merge(model["doc"], data)
            else:
                model["doc"], model["exists"] = None, False
        trace.append((model["doc"], model["version"], "applied" if ok else "rejected"))
    return trace


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["x", "y"])
keys = st.sampled_from(["a", "b", "c"])
documents = st.dictionaries(
    keys, st.recursive(json_scalars, lambda c: st.dictionaries(keys, c, max_size=2), max_leaves=4)
).map(lambda d: {k: v for k, v in d.items() if v is not None})
patches = st.dictionaries(
    keys, st.recursive(json_scalars, lambda c: st.dictionaries(keys, c, max_size=2), max_leaves=4)
)
operations = st.one_of(
    st.tuples(st.just("record.upserted"), documents, st.none() | st.integers(0, 4)),
    st.tuples(st.just("record.patched"), patches, st.none() | st.integers(0, 4)),
    st.tuples(st.just("record.deleted"), st.none(), st.none() | st.integers(0, 4)),
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(operations, max_size=12))
def test_fold_matches_reference_model(ops: list[tuple[str, Any, int | None]]) -> None:
    expected = reference_fold(ops)
    rec: Record | None = None
    last_version = 0
    created: datetime | None = None
    for i, ((etype, data, exp), (doc, version, status)) in enumerate(
        zip(ops, expected, strict=True)
    ):
        before = rec
        rec, outcome = apply(rec, etype, data, at=at(i), expected_version=exp)
        assert outcome.status == status
        if status == "rejected":
            assert rec == before
            assert outcome.reason
            continue
        assert rec is not None
        assert rec.version > last_version
        assert rec.version == last_version + 1
        last_version = rec.version
        assert rec.data == doc
        assert rec.version == version
        assert rec.updated_at == at(i)
        if etype == "record.upserted" and (before is None or not before.live):
            created = at(i)
        assert rec.created_at == created
    assert (rec.version if rec else 0) == (expected[-1][1] if expected else 0)
