"""RFC 7396 JSON Merge Patch (eventfold.mergepatch)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eventfold.mergepatch import merge_patch

# RFC 7396, Appendix A: every example, as (original, patch, result).
RFC7396_APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "expected"), RFC7396_APPENDIX_A)
def test_rfc7396_appendix_a_examples(original: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(original, patch) == expected


@pytest.mark.parametrize(("original", "patch", "expected"), RFC7396_APPENDIX_A)
def test_inputs_are_never_mutated(original: Any, patch: Any, expected: Any) -> None:
    original_before = copy.deepcopy(original)
    patch_before = copy.deepcopy(patch)
    merge_patch(original, patch)
    assert original == original_before
    assert patch == patch_before


def test_nested_target_is_not_mutated_by_a_nested_patch() -> None:
    target = {"a": {"b": {"c": 1, "d": 2}}, "keep": {"x": 1}}
    before = copy.deepcopy(target)
    result = merge_patch(target, {"a": {"b": {"c": None, "e": 3}}})
    assert result == {"a": {"b": {"d": 2, "e": 3}}, "keep": {"x": 1}}
    assert target == before
    assert result["a"] is not target["a"]
    assert result["a"]["b"] is not target["a"]["b"]


def test_result_is_a_new_top_level_object() -> None:
    target = {"a": 1}
    result = merge_patch(target, {})
    assert result == target
    assert result is not target


def test_null_inside_an_array_value_is_kept() -> None:
    # Only object members with null are removals; arrays are replaced verbatim.
    assert merge_patch({}, {"a": [None, 1]}) == {"a": [None, 1]}


def test_removing_a_missing_member_is_a_no_op() -> None:
    assert merge_patch({"a": 1}, {"zz": None}) == {"a": 1}


def test_non_object_target_is_replaced_by_an_object_patch() -> None:
    assert merge_patch("scalar", {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}


def test_result_does_not_alias_values_of_the_patch() -> None:
    patch = {"tags": ["x"]}
    result = merge_patch({}, patch)
    result["tags"].append("y")
    assert patch == {"tags": ["x"]}
