"""Pure parts of the sync runner: page → events, change detection, Retry-After."""

from __future__ import annotations

import pytest

from consumers.sync.connectors import parse_retry_after
from eventfold.syncpages import DELETED, BadPage, PageSpec, page_changes

SPEC = PageSpec("0123456789abcdef", "things", deleted_field="deleted")


def test_a_page_fetched_twice_has_the_same_event_ids() -> None:
    items = [{"id": "a", "x": 1}, {"id": "b", "x": 2}]
    first = page_changes("t1", SPEC, items, {})
    again = page_changes("t1", SPEC, items, {})
    assert [e.id for e in first.events] == [e.id for e in again.events]
    assert [e.subject for e in first.events] == ["things/a", "things/b"]
    assert all(e.type == "record.upserted" for e in first.events)


def test_unchanged_items_publish_nothing_and_a_to_b_to_a_is_three_events() -> None:
    a, b = {"id": "a", "x": 1}, {"id": "a", "x": 2}
    one = page_changes("t1", SPEC, [a], {})
    assert page_changes("t1", SPEC, [a], one.states).events == []
    two = page_changes("t1", SPEC, [b], one.states)
    three = page_changes("t1", SPEC, [a], two.states)
    ids = {one.events[0].id, two.events[0].id, three.events[0].id}
    assert len(ids) == 3
    assert three.states["a"][0] == 3


def test_deletions_and_duplicates_within_a_page() -> None:
    page = [{"id": "a", "x": 1}, {"id": "a", "x": 1}, {"id": "a", "deleted": True}]
    changes = page_changes("t1", SPEC, page, {})
    assert [e.type for e in changes.events] == ["record.upserted", "record.deleted"]
    assert changes.states["a"] == (2, DELETED)
    assert changes.events[1].data == {}


@pytest.mark.parametrize("bad", [["x"], [{"no": "id"}], [{"id": "bad id with spaces"}]])
def test_bad_items_are_refused(bad: list[object]) -> None:
    with pytest.raises(BadPage):
        page_changes("t1", SPEC, bad, {})


def test_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
