"""The compatibility checker against a table of schema pairs.

Most rows are the changes Confluent Schema Registry classifies for JSON Schema:
source: confluentinc/schema-registry, json-schema-provider,
``io/confluent/kafka/schemaregistry/json/diff/SchemaDiff.java`` (``COMPATIBLE_CHANGES``,
the backward-compatible changes) and ``ObjectSchemaDiff.java`` (open, closed and
partially open content models), as described in Confluent's "Schema Evolution and
Compatibility" documentation (backward: new readers read old data; forward: old
readers read new data; full: both). Row names are Confluent's ``Difference.Type``.
"""

from __future__ import annotations

from typing import Any

import pytest

from eventfold.eventtypes.compat import Mode, check
from eventfold.eventtypes.upcast import Default, Drop, Rename, upcast_schema


def obj(
    closed: bool | dict[str, Any] | None = None, required: tuple[str, ...] = (), **props: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    if closed is True:
        doc["additionalProperties"] = False
    elif isinstance(closed, dict):
        doc["additionalProperties"] = closed
    return doc


S = {"type": "string"}
INT = {"type": "integer"}

#: (name, previous, new, mode, pointers of the incompatibilities; [] = compatible)
TABLE: list[tuple[str, Any, Any, Mode, list[str]]] = [
    # -- types
    ("TYPE_EXTENDED", S, {"type": ["string", "null"]}, "backward", []),
    ("TYPE_NARROWED", {"type": ["string", "null"]}, S, "backward", ["/schema/type"]),
    ("TYPE_CHANGED", S, INT, "backward", ["/schema/type"]),
    ("integer to number is TYPE_EXTENDED", INT, {"type": "number"}, "backward", []),
    ("number to integer is TYPE_NARROWED", {"type": "number"}, INT, "backward", ["/schema/type"]),
    ("SCHEMA_REMOVED (to an empty schema)", S, {}, "backward", []),
    ("DESCRIPTION_CHANGED, TITLE_CHANGED, DEFAULT_CHANGED",
     {**S, "title": "a", "description": "b", "default": "c"},
     {**S, "title": "x", "description": "y", "default": "z"}, "full", []),
    # -- strings
    ("MAX_LENGTH_INCREASED", {**S, "maxLength": 5}, {**S, "maxLength": 9}, "backward", []),
    ("MAX_LENGTH_REMOVED", {**S, "maxLength": 5}, S, "backward", []),
    ("MAX_LENGTH_DECREASED", {**S, "maxLength": 9}, {**S, "maxLength": 5}, "backward",
     ["/schema/maxLength"]),
    ("MAX_LENGTH_ADDED", S, {**S, "maxLength": 5}, "backward", ["/schema/maxLength"]),
    ("MIN_LENGTH_DECREASED", {**S, "minLength": 3}, {**S, "minLength": 1}, "backward", []),
    ("MIN_LENGTH_INCREASED", {**S, "minLength": 1}, {**S, "minLength": 3}, "backward",
     ["/schema/minLength"]),
    ("PATTERN_REMOVED", {**S, "pattern": "^a"}, S, "backward", []),
    ("PATTERN_ADDED", S, {**S, "pattern": "^a"}, "backward", ["/schema/pattern"]),
    ("PATTERN_CHANGED", {**S, "pattern": "^a"}, {**S, "pattern": "^b"}, "backward",
     ["/schema/pattern"]),
    # -- numbers
    ("MAXIMUM_INCREASED", {**INT, "maximum": 5}, {**INT, "maximum": 9}, "backward", []),
    ("MAXIMUM_DECREASED", {**INT, "maximum": 9}, {**INT, "maximum": 5}, "backward",
     ["/schema/maximum"]),
    ("MINIMUM_DECREASED", {**INT, "minimum": 5}, {**INT, "minimum": 1}, "backward", []),
    ("MINIMUM_REMOVED", {**INT, "minimum": 5}, INT, "backward", []),
    ("MINIMUM_INCREASED", {**INT, "minimum": 1}, {**INT, "minimum": 5}, "backward",
     ["/schema/minimum"]),
    ("MINIMUM_ADDED", INT, {**INT, "minimum": 0}, "backward", ["/schema/minimum"]),
    ("EXCLUSIVE_MAXIMUM_INCREASED", {**INT, "exclusiveMaximum": 5},
     {**INT, "exclusiveMaximum": 9}, "backward", []),
    ("EXCLUSIVE_MINIMUM_INCREASED", {**INT, "exclusiveMinimum": 1},
     {**INT, "exclusiveMinimum": 5}, "backward", ["/schema/exclusiveMinimum"]),
    ("MULTIPLE_OF_REDUCED", {**INT, "multipleOf": 4}, {**INT, "multipleOf": 2}, "backward", []),
    ("MULTIPLE_OF_EXPANDED", {**INT, "multipleOf": 2}, {**INT, "multipleOf": 4}, "backward",
     ["/schema/multipleOf"]),
    ("MULTIPLE_OF_CHANGED", {**INT, "multipleOf": 3}, {**INT, "multipleOf": 2}, "backward",
     ["/schema/multipleOf"]),
    # -- enums
    ("ENUM_ARRAY_EXTENDED", {"enum": ["a", "b"]}, {"enum": ["a", "b", "c"]}, "backward", []),
    ("ENUM_ARRAY_NARROWED", {"enum": ["a", "b"]}, {"enum": ["a"]}, "backward", ["/schema/enum"]),
    ("ENUM_ARRAY_CHANGED", {"enum": ["a", "b"]}, {"enum": ["a", "c"]}, "backward",
     ["/schema/enum"]),
    ("enum added to a free string", S, {**S, "enum": ["a"]}, "backward", ["/schema/enum"]),
    # -- required properties
    ("REQUIRED_ATTRIBUTE_ADDED", obj(a=S), obj(required=("a",), a=S), "backward",
     ["/schema/required"]),
    ("REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED", obj(a=S),
     obj(required=("a",), a={**S, "default": "x"}), "backward", []),
    ("REQUIRED_ATTRIBUTE_REMOVED", obj(required=("a",), a=S), obj(a=S), "backward", []),
    # -- open content model (additionalProperties absent or true)
    ("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", obj(a=S), obj(a=S, b=INT), "backward",
     ["/schema/properties/b"]),
    ("PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL", obj(a=S), obj(a=S, b={}),
     "backward", []),
    ("PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL", obj(a=S, b=INT), obj(a=S), "backward", []),
    # -- closed content model (additionalProperties false)
    ("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", obj(True, a=S), obj(True, a=S, b=INT),
     "backward", []),
    ("REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", obj(True, a=S),
     obj(True, ("b",), a=S, b=INT), "backward", ["/schema/required"]),
    ("REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL", obj(True, a=S),
     obj(True, ("b",), a=S, b={**INT, "default": 0}), "backward", []),
    ("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", obj(True, a=S, b=INT), obj(True, a=S),
     "backward", ["/schema/properties/b"]),
    ("PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL", obj(True, a=S, b=False),
     obj(True, a=S), "backward", []),
    # -- partially open content model (additionalProperties a schema)
    ("PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", obj(S, a=S),
     obj(S, a=S, b=S), "backward", []),
    ("PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", obj(S, a=S),
     obj(S, a=S, b=INT), "backward", ["/schema/properties/b"]),
    ("PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", obj(S, a=S, b=S),
     obj(S, a=S), "backward", []),
    ("PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", obj(S, a=S, b=INT),
     obj(S, a=S), "backward", ["/schema/properties/b"]),
    # -- additionalProperties
    ("ADDITIONAL_PROPERTIES_ADDED", obj(True, a=S), obj(a=S), "backward", []),
    ("ADDITIONAL_PROPERTIES_REMOVED", obj(a=S), obj(True, a=S), "backward",
     ["/schema/additionalProperties"]),
    ("ADDITIONAL_PROPERTIES_NARROWED", obj(a=S), obj(S, a=S), "backward",
     ["/schema/additionalProperties/type"]),
    ("ADDITIONAL_PROPERTIES_EXTENDED", obj(S, a=S), obj(a=S), "backward", []),
    ("MAX_PROPERTIES_DECREASED", {"type": "object", "maxProperties": 5},
     {"type": "object", "maxProperties": 2}, "backward", ["/schema/maxProperties"]),
    ("MIN_PROPERTIES_DECREASED", {"type": "object", "minProperties": 2},
     {"type": "object", "minProperties": 1}, "backward", []),
    # -- arrays
    ("MAX_ITEMS_INCREASED", {"type": "array", "maxItems": 2}, {"type": "array", "maxItems": 3},
     "backward", []),
    ("MIN_ITEMS_INCREASED", {"type": "array", "minItems": 1}, {"type": "array", "minItems": 2},
     "backward", ["/schema/minItems"]),
    ("UNIQUE_ITEMS_ADDED", {"type": "array"}, {"type": "array", "uniqueItems": True},
     "backward", ["/schema/uniqueItems"]),
    ("UNIQUE_ITEMS_REMOVED", {"type": "array", "uniqueItems": True}, {"type": "array"},
     "backward", []),
    ("items narrowed", {"type": "array", "items": {"type": ["string", "null"]}},
     {"type": "array", "items": S}, "backward", ["/schema/items/type"]),
    ("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL", {"type": "array", "prefixItems": [S], "items": False},
     {"type": "array", "prefixItems": [S, INT], "items": False}, "backward", []),
    ("ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL",
     {"type": "array", "prefixItems": [S, INT], "items": False},
     {"type": "array", "prefixItems": [S], "items": False}, "backward", ["/schema/items"]),
    ("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL", {"type": "array", "prefixItems": [S, INT]},
     {"type": "array", "prefixItems": [S]}, "backward", []),
    ("ITEM_ADDED_TO_OPEN_CONTENT_MODEL", {"type": "array", "prefixItems": [S]},
     {"type": "array", "prefixItems": [S, INT]}, "backward", ["/schema/prefixItems/1/type"]),
    # -- combined schemas
    ("SUM_TYPE_EXTENDED", {"anyOf": [S, INT]}, {"anyOf": [S, INT, {"type": "null"}]}, "backward",
     []),
    ("SUM_TYPE_NARROWED", {"oneOf": [S, INT]}, {"oneOf": [S]}, "backward",
     ["/schema/oneOf/1"]),
    ("SUM_TYPE_EXTENDED from a single type", S, {"oneOf": [S, INT]}, "backward", []),
    ("PRODUCT_TYPE_NARROWED", {"allOf": [S, {"maxLength": 4}]}, {"allOf": [S]}, "backward", []),
    ("PRODUCT_TYPE_EXTENDED", {"allOf": [S]}, {"allOf": [S, {"maxLength": 4}]}, "backward",
     ["/schema/allOf/1/maxLength"]),
    ("a local $ref followed on both sides",
     {"$defs": {"n": INT}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}},
     {"$defs": {"n": {"type": "number"}}, "type": "object",
      "properties": {"a": {"$ref": "#/$defs/n"}}}, "backward", []),
    ("not changed: not provable, reported", {"not": S}, {"not": INT}, "backward", ["/schema/not"]),
    ("nested: a narrowed property two levels down",
     obj(a=obj(b={"type": ["string", "null"]})), obj(a=obj(b=S)), "backward",
     ["/schema/properties/a/properties/b/type"]),
    # -- forward: the previous version reads data of the new one
    ("forward: optional property removed from a closed model", obj(True, a=S, b=INT),
     obj(True, a=S), "forward", []),
    ("forward: property added to a closed model", obj(True, a=S), obj(True, a=S, b=INT),
     "forward", ["/schema/properties/b"]),
    ("forward: type extended", S, {"type": ["string", "null"]}, "forward", ["/schema/type"]),
    ("forward: required removed", obj(required=("a",), a=S), obj(a=S), "forward",
     ["/schema/required"]),
    # -- full: both
    ("full: optional property added to a closed model", obj(True, a=S), obj(True, a=S, b=INT),
     "full", ["/schema/properties/b"]),
    ("full: a description only", {**S, "description": "x"}, S, "full", []),
    ("full: maxLength increased", {**S, "maxLength": 5}, {**S, "maxLength": 9}, "full",
     ["/schema/maxLength"]),
    # -- none
    ("none: anything", S, INT, "none", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("previous", "new", "mode", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_compatibility_table(previous: Any, new: Any, mode: Mode, expected: list[str]) -> None:
    found = check(previous, new, mode)
    assert [i.path for i in found] == expected, [(i.path, i.message) for i in found]
    assert all(i.message for i in found)


def test_messages_say_what_changed() -> None:
    [found] = check(obj(a={"type": ["string", "null"]}), obj(a=S), "backward")
    assert found.path == "/schema/properties/a/type"
    assert "null" in found.message
    assert "previous version" in found.message


def test_a_rename_with_an_upcast_is_backward_compatible() -> None:
    """A required property renamed is refused, unless the new version's upcast moves it."""
    old = obj(True, ("amount",), amount={"type": "number"})
    new = obj(True, ("total",), total={"type": "number"})
    assert [i.path for i in check(old, new, "backward")] == [
        "/schema/required",
        "/schema/properties/amount",
    ]
    lifted = upcast_schema(old, [Rename(op="rename", **{"from": "/amount"}, path="/total")])
    assert check(old, new, "backward", upcast_previous=lifted) == []
    # A default makes a new required property acceptable; a drop an old one removed.
    new2 = obj(True, ("amount", "currency"), amount={"type": "number"},
               currency={"enum": ["EUR", "USD"]})  # fmt: skip
    assert check(old, new2, "backward")
    lifted = upcast_schema(old, [Default(op="default", path="/currency", value="EUR")])
    assert check(old, new2, "backward", upcast_previous=lifted) == []
    old3 = obj(True, ("amount",), amount={"type": "number"}, legacy=S)
    assert check(old3, old, "backward")
    lifted = upcast_schema(old3, [Drop(op="drop", path="/legacy")])
    assert check(old3, old, "backward", upcast_previous=lifted) == []


def test_a_recursive_schema_is_compared_in_bounded_steps() -> None:
    """Unions nested through a recursive $ref multiply the comparisons: they stop, reported."""
    node = {"anyOf": [{"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}},
                      {"type": "object", "properties": {"y": {"$ref": "#/$defs/a"}}}]}  # fmt: skip
    other = {"anyOf": [{"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}},
                       {"type": "string"}]}  # fmt: skip
    previous = {"$defs": {"a": node}, "$ref": "#/$defs/a"}
    new = {"$defs": {"a": other}, "$ref": "#/$defs/a"}
    found = check(previous, new, "full")
    assert found
    assert check(previous, previous, "full") == []
