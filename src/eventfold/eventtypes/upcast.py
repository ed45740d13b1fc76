"""Declarative upcasts: how a version lifts data of the version before it.

A version may declare a list of steps, applied in order to data of the
previous version: ``rename`` (move a member), ``default`` (set a member that is
absent) and ``drop`` (remove a member), each addressed by a JSON pointer into
``data``. Nothing is executed but these three moves. A step whose source is
absent does nothing (older data may lack optional members). A property the new
version adds as required with a ``default`` is filled with it as well.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from eventfold.eventtypes.pointers import MISSING, parse

_POINTER = r"^(/[^/]*)+$"
#: The most steps one version may declare.
MAX_STEPS = 50


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("path", "from_", check_fields=False)
    @classmethod
    def _pointer(cls, value: str) -> str:
        parse(value)  # ValueError for a malformed pointer
        return value


class Rename(_Step):
    """Move the member at ``from`` to ``path`` (replacing what was there)."""

    op: Literal["rename"]
    from_: str = Field(alias="from", pattern=_POINTER, max_length=512)
    path: str = Field(pattern=_POINTER, max_length=512)


class Default(_Step):
    """Set the member at ``path`` to ``value`` when it is absent."""

    op: Literal["default"]
    path: str = Field(pattern=_POINTER, max_length=512)
    value: Any


class Drop(_Step):
    """Remove the member at ``path`` when present."""

    op: Literal["drop"]
    path: str = Field(pattern=_POINTER, max_length=512)


Step = Annotated[Rename | Default | Drop, Field(discriminator="op")]
#: A version's upcast: the steps lifting data of the version before to it.
Steps = Annotated[list[Step], Field(max_length=MAX_STEPS)]


def _parent(doc: dict[str, Any], parts: Sequence[str], *, create: bool) -> dict[str, Any] | None:
    """The object holding the last token of ``parts``, copied on the way down (``doc`` is
    already a copy): the caller's data is never changed, and only the touched path is
    copied (made on the way with ``create``)."""
    node = doc
    for part in parts[:-1]:
        child = node.get(part, MISSING)
        if child is MISSING and create:
            child = {}
        if not isinstance(child, dict):
            return None
        node[part] = child = dict(child)
        node = child
    return node


def apply(data: Any, steps: list[Rename | Default | Drop]) -> Any:
    """``data`` lifted by ``steps`` (a new value: ``data`` itself is left alone)."""
    if not steps or not isinstance(data, dict):
        return data
    out = dict(data)
    for step in steps:
        if isinstance(step, Rename):
            source = parse(step.from_)
            holder = _parent(out, source, create=False)
            if holder is None or source[-1] not in holder:
                continue
            value = holder.pop(source[-1])
            target = parse(step.path)
            into = _parent(out, target, create=True)
            if into is not None:
                into[target[-1]] = value
        elif isinstance(step, Default):
            target = parse(step.path)
            into = _parent(out, target, create=True)
            if into is not None and target[-1] not in into:
                into[target[-1]] = copy.deepcopy(step.value)
        else:
            source = parse(step.path)
            holder = _parent(out, source, create=False)
            if holder is not None:
                holder.pop(source[-1], None)
    return out


def implicit_defaults(previous: Any, new: Any) -> list[Rename | Default | Drop]:
    """``default`` steps for top-level properties ``new`` requires (with a default) and
    ``previous`` did not: old data gets the value the new version promises."""
    if not isinstance(new, dict):
        return []
    was = set(previous.get("required") or []) if isinstance(previous, dict) else set()
    props = new.get("properties") or {}
    return [
        Default(op="default", path="/" + name.replace("~", "~0").replace("/", "~1"),
                value=props[name]["default"])
        for name in new.get("required") or []
        if name not in was and isinstance(props.get(name), dict) and "default" in props[name]
    ]  # fmt: skip


def _property_slot(schema: Any, parts: Sequence[str], *, create: bool) -> dict[str, Any] | None:
    """The ``properties``-holding object schema of the last token, through nested objects."""
    node = schema
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return None
        props = node.setdefault("properties", {}) if create else node.get("properties") or {}
        child = props.get(part)
        if child is None and create:
            child = props[part] = {"type": "object"}
        node = child
    return node if isinstance(node, dict) else None


def upcast_schema(schema: Any, steps: list[Rename | Default | Drop]) -> Any:
    """``schema`` (of the previous version) as it describes data lifted by ``steps``.

    Compatibility checks judge this: a renamed required property moves with its
    schema, a defaulted one is always present, a dropped one never is.
    """
    if not steps or not isinstance(schema, dict):
        return schema
    out = copy.deepcopy(schema)
    for step in steps:
        if isinstance(step, Rename):
            source, target = parse(step.from_), parse(step.path)
            holder = _property_slot(out, source, create=False)
            if holder is None or source[-1] not in (holder.get("properties") or {}):
                continue
            moved = holder["properties"].pop(source[-1])
            required = source[-1] in (holder.get("required") or [])
            if required:
                holder["required"] = [n for n in holder["required"] if n != source[-1]]
            into = _property_slot(out, target, create=True)
            if into is not None:
                into.setdefault("properties", {})[target[-1]] = moved
                if required:
                    into["required"] = [*(into.get("required") or []), target[-1]]
        elif isinstance(step, Default):
            target = parse(step.path)
            into = _property_slot(out, target, create=True)
            if into is None:
                continue
            props = into.setdefault("properties", {})
            props.setdefault(target[-1], {"const": step.value})
            if target[-1] not in (into.get("required") or []):
                into["required"] = [*(into.get("required") or []), target[-1]]
        else:
            source = parse(step.path)
            holder = _property_slot(out, source, create=False)
            if holder is None:
                continue
            holder.setdefault("properties", {})[source[-1]] = False
            if source[-1] in (holder.get("required") or []):
                holder["required"] = [n for n in holder["required"] if n != source[-1]]
    return out
