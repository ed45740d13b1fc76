"""Compatibility of two JSON Schemas (2020-12): can one version's data pass the other?

The rules follow Confluent Schema Registry's for JSON Schema (its
``SchemaDiff``: a type may be extended but not narrowed, an enum extended, a
bound relaxed; a property added to an open content model or removed from a
closed one breaks readers; a required property without a default breaks them
too), reduced to one question: is every instance the *writer* schema accepts
also accepted by the *reader* schema? ``backward`` asks it with the previous
version writing and the new one reading (new consumers read old events),
``forward`` the other way round, ``full`` both, ``none`` neither.

The check is structural and errs on the safe side: what it cannot prove
compatible (a changed ``not``, ``if``, ``patternProperties``, …) it reports.
Each incompatibility names its place as a JSON pointer into the schemas (the
keyword path, the same in both versions) under ``/schema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from eventfold.eventtypes.pointers import MISSING, get, join, parse

Mode = Literal["backward", "forward", "full", "none"]
MODES: tuple[Mode, ...] = ("backward", "forward", "full", "none")

_ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
#: Keywords that never change which instances are valid (annotations, definitions).
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$comment",
        "$defs",
        "definitions",
        "$vocabulary",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
    }
)
#: Keywords this module compares one by one; any other is compared for equality.
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
    }
)
#: How deep references are followed (a recursive schema compares up to here).
_MAX_DEPTH = 64
#: Comparisons one check may make: branches nested in branches multiply, and a
#: registration must answer in bounded time whatever schema it is sent.
_MAX_STEPS = 20_000


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason the versions are not compatible: where (a JSON pointer) and what."""

    path: str
    message: str


def check(
    previous: Any, new: Any, mode: Mode, *, path: str = "/schema", upcast_previous: Any = None
) -> list[Incompatibility]:
    """Why ``new`` is not ``mode``-compatible with ``previous`` (empty when it is).

    ``upcast_previous`` is ``previous`` as its data looks once lifted by the new
    version's upcast (:func:`eventfold.eventtypes.upcast.upcast_schema`): new
    readers only ever see old data that way, so ``backward`` judges that.
    """
    out: list[Incompatibility] = []
    if mode in ("backward", "full"):
        writer = previous if upcast_previous is None else upcast_previous
        out += _Walk(writer, new, "the previous version", "this version").run(path)
    if mode in ("forward", "full"):
        out += _Walk(new, previous, "this version", "the previous version").run(path)
    # One report per place and message (full mode may find a change twice).
    return list(dict.fromkeys(out))


def _types(schema: dict[str, Any]) -> frozenset[str]:
    value = schema.get("type", MISSING)
    if value is MISSING:
        return _ALL_TYPES
    names = [value] if isinstance(value, str) else list(value)
    found = set(names)
    if "number" in found:
        found.add("integer")  # every integer is a number
    return frozenset(found)


def _key(value: Any) -> bytes:
    """A JSON value's identity (1 and 1.0 alike, true and 1 not), for enum comparisons."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema and isinstance(schema["enum"], list):
        return list(schema["enum"])
    return None


def _constrains(schema: Any) -> bool:
    """Whether ``schema`` refuses anything at all (``true`` and ``{}`` do not)."""
    if schema is True:
        return False
    if schema is False:
        return True
    return any(k not in _ANNOTATIONS for k in schema)


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


class _TooComplex(Exception):
    """The comparison ran out of steps."""


class _Walk:
    """Whether every instance ``writer`` accepts is accepted by ``reader``, keyword by keyword."""

    def __init__(self, writer: Any, reader: Any, writer_name: str, reader_name: str) -> None:
        self.roots = (writer, reader)
        self.w_name = writer_name
        self.r_name = reader_name
        self.found: list[Incompatibility] = []
        self.steps = 0

    def run(self, path: str) -> list[Incompatibility]:
        try:
            self.sub(self.roots[0], self.roots[1], path, 0)
        except _TooComplex:
            return [Incompatibility(path, "the schemas are too complex to compare")]
        return self.found

    def report(self, path: str, message: str) -> None:
        self.found.append(Incompatibility(path, message))

    def _deref(self, schema: Any, side: int, depth: int) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            if depth >= _MAX_DEPTH:
                break
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return schema  # refused at registration; compared by equality below
            try:
                target = get(self.roots[side], parse(ref[1:]))
            except ValueError:
                return schema
            if target is MISSING:
                return schema
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            if any(k not in _ANNOTATIONS for k in rest):
                # A $ref beside other keywords is their conjunction: compare as allOf.
                return {"allOf": [target, rest]}
            schema = target
            depth += 1
        return schema

    def sub(self, w: Any, r: Any, path: str, depth: int) -> None:
        """Report where an instance valid under ``w`` may be invalid under ``r``."""
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _TooComplex
        if depth > _MAX_DEPTH:
            self.report(path, "nested too deep to compare")
            return
        w = self._deref(w, 0, depth)
        r = self._deref(r, 1, depth)
        if not _constrains(r) or w is False:
            return
        if r is False:
            self.report(path, f"{self.r_name} accepts nothing here; {self.w_name} accepts data")
            return
        if w is True:
            w = {}
        if self._combined(w, r, path, depth):
            return
        w_types = _types(w)
        r_types = _types(r)
        lost = w_types - r_types
        if lost and not _values_fit(w, r_types):
            self.report(
                join(path, "type"),
                f"type narrowed: {self.w_name} allows {sorted(lost)}, {self.r_name} does not",
            )
        self._enum(w, r, path)
        shared = w_types & r_types
        if shared & {"number", "integer"}:
            self._numbers(w, r, path)
        if "string" in shared:
            self._strings(w, r, path)
        if "array" in shared:
            self._arrays(w, r, path, depth)
        if "object" in shared:
            self._objects(w, r, path, depth)
        for keyword in sorted(set(r) - _HANDLED - _ANNOTATIONS):
            if keyword not in w or _key(w[keyword]) != _key(r[keyword]):
                self.report(
                    join(path, keyword),
                    f"{keyword} differs between the versions: compatibility cannot be proven",
                )

    # -- composition --------------------------------------------------------

    def _combined(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> bool:
        """Handle anyOf/oneOf/allOf; True when ``w`` and ``r`` need no further comparison."""
        r_key = "anyOf" if "anyOf" in r else "oneOf"
        w_key = "anyOf" if "anyOf" in w else "oneOf"
        r_union = r.get(r_key)
        w_union = w.get(w_key)
        same_union = isinstance(r_union, list) and r_union == w_union
        if isinstance(w_union, list) and not same_union:
            rest = {k: v for k, v in w.items() if k not in ("anyOf", "oneOf")}
            # Each alternative the writer allows (with its sibling keywords) must fit the reader.
            for i, branch in enumerate(w_union):
                where = join(path, w_key, i)
                merged = {"allOf": [rest, branch]} if _constrains(rest) else branch
                if isinstance(r_union, list):
                    if all(self._trial(merged, b, depth, where) for b in r_union):
                        self.report(where, f"this branch of {self.w_name} fits none of the "
                                    f"{r_key} branches of {self.r_name}")  # fmt: skip
                    r_rest = {k: v for k, v in r.items() if k not in ("anyOf", "oneOf")}
                    self.sub(merged, r_rest, where, depth + 1)
                else:
                    self.sub(merged, r, where, depth + 1)
            return True
        if isinstance(r_union, list) and not same_union:
            if all(self._trial(w, b, depth, path) for b in r_union):
                self.report(
                    join(path, r_key),
                    f"{r_key} narrowed: what {self.w_name} accepts fits none of its branches",
                )
            rest = {k: v for k, v in r.items() if k not in ("anyOf", "oneOf")}
            self.sub(w, rest, path, depth + 1)
            return True
        if isinstance(r.get("allOf"), list) and r.get("allOf") != w.get("allOf"):
            for i, branch in enumerate(r["allOf"]):
                self.sub(w, branch, join(path, "allOf", i), depth + 1)
            self.sub(w, {k: v for k, v in r.items() if k != "allOf"}, path, depth + 1)
            return True
        if isinstance(w.get("allOf"), list) and w.get("allOf") != r.get("allOf"):
            # The writer is the conjunction: it fits when one of its parts already does;
            # otherwise report what keeps the closest part from fitting.
            parts = [*w["allOf"], {k: v for k, v in w.items() if k != "allOf"}]
            trials = [self._trial(p, r, depth, path) for p in parts]
            best = min(trials, key=len)
            self.found += best
            return True
        return False

    def _trial(self, w: Any, r: Any, depth: int, path: str) -> list[Incompatibility]:
        """The incompatibilities of ``w`` against ``r`` at ``path``, without reporting them."""
        saved, self.found = self.found, []
        try:
            self.sub(w, r, path, depth + 1)
            return self.found
        finally:
            self.found = saved

    # -- keywords -----------------------------------------------------------

    def _enum(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        r_values = _values(r)
        if r_values is None:
            return
        keyword = "const" if "const" in r else "enum"
        w_values = _values(w)
        if w_values is None:
            self.report(
                join(path, keyword),
                f"{keyword} added: {self.r_name} allows only "
                f"{_show(r_values)}, {self.w_name} any value",
            )
            return
        allowed = {_key(v) for v in r_values}
        missing = [v for v in w_values if _key(v) not in allowed]
        if missing:
            self.report(
                join(path, keyword),
                f"{keyword} narrowed: {_show(missing)} allowed by "
                f"{self.w_name}, not by {self.r_name}",
            )

    def _bound(
        self, w: dict[str, Any], r: dict[str, Any], path: str, keyword: str, *, upper: bool
    ) -> None:
        if keyword not in r:
            return
        limit = r[keyword]
        have = w.get(keyword)
        tighter = have is None or (have > limit if upper else have < limit)
        if tighter:
            what = "lowered" if upper else "raised"
            if have is None:
                what = "added"
            self.report(
                join(path, keyword),
                f"{keyword} {what}: {self.r_name} has {limit}, "
                f"{self.w_name} {'none' if have is None else have}",
            )

    def _numbers(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        # An exclusive bound of the writer at least as tight as the reader's inclusive one fits.
        for inclusive, exclusive, upper in (
            ("minimum", "exclusiveMinimum", False),
            ("maximum", "exclusiveMaximum", True),
        ):
            if inclusive in r:
                w_bound = _effective(w, inclusive, exclusive, upper)
                limit = r[inclusive]
                looser = w_bound is None or (w_bound[0] > limit if upper else w_bound[0] < limit)
                if looser:
                    self._bound(w, r, path, inclusive, upper=upper)
            if exclusive in r:
                w_bound = _effective(w, inclusive, exclusive, upper)
                limit = r[exclusive]
                ok = w_bound is not None and (
                    (w_bound[0] < limit or (w_bound[0] == limit and w_bound[1]))
                    if upper
                    else (w_bound[0] > limit or (w_bound[0] == limit and w_bound[1]))
                )
                if not ok:
                    self._bound(w, r, path, exclusive, upper=upper)
        if "multipleOf" in r:
            have = w.get("multipleOf")
            if have is None or not _is_multiple(have, r["multipleOf"]):
                self.report(
                    join(path, "multipleOf"),
                    f"multipleOf changed: {self.r_name} needs "
                    f"multiples of {r['multipleOf']}, {self.w_name} of {have}",
                )

    def _strings(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        self._bound(w, r, path, "minLength", upper=False)
        self._bound(w, r, path, "maxLength", upper=True)
        if "pattern" in r and w.get("pattern") != r["pattern"]:
            self.report(
                join(path, "pattern"),
                f"pattern {'changed' if 'pattern' in w else 'added'}"
                f": {self.r_name} requires {r['pattern']!r}",
            )

    def _arrays(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> None:
        self._bound(w, r, path, "minItems", upper=False)
        self._bound(w, r, path, "maxItems", upper=True)
        if r.get("uniqueItems") is True and w.get("uniqueItems") is not True:
            self.report(join(path, "uniqueItems"), f"uniqueItems added by {self.r_name}")
        w_prefix = w.get("prefixItems") or []
        r_prefix = r.get("prefixItems") or []
        w_items = w.get("items", True)
        r_items = r.get("items", True)
        for i in range(max(len(w_prefix), len(r_prefix))):
            w_i = w_prefix[i] if i < len(w_prefix) else w_items
            r_i = r_prefix[i] if i < len(r_prefix) else r_items
            where = join(path, "prefixItems", i) if i < len(r_prefix) else join(path, "items")
            self.sub(w_i, r_i, where, depth + 1)
        self.sub(w_items, r_items, join(path, "items"), depth + 1)

    def _objects(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> None:
        self._bound(w, r, path, "minProperties", upper=False)
        self._bound(w, r, path, "maxProperties", upper=True)
        w_props: dict[str, Any] = w.get("properties") or {}
        r_props: dict[str, Any] = r.get("properties") or {}
        w_required = set(w.get("required") or [])
        for name in r.get("required") or []:
            if name in w_required or w_props.get(name) is False:
                continue
            if isinstance(r_props.get(name), dict) and "default" in r_props[name]:
                continue  # filled with its default when older data is read (upcast)
            self.report(
                join(path, "required"),
                f"property {name!r} is required by {self.r_name}, not by {self.w_name}",
            )
        w_extra = w.get("additionalProperties", True)
        r_extra = r.get("additionalProperties", True)
        w_patterns = w.get("patternProperties")
        r_patterns = r.get("patternProperties")
        for name in sorted(set(w_props) | set(r_props)):
            where = join(path, "properties", name)
            if name in w_props and name in r_props:
                self.sub(w_props[name], r_props[name], where, depth + 1)
            elif name in w_props:
                # The reader dropped it: its additionalProperties now govern the property.
                refused = r_extra is not True and _trial_fails(self, w_props[name], r_extra, depth)
                if r_patterns or refused:
                    closed = r_extra is False and not r_patterns
                    self.report(
                        where,
                        f"property {name!r} removed from "
                        f"{'a closed' if closed else 'a partially open'} content model: "
                        f"{self.r_name} refuses it, {self.w_name} allows it",
                    )
            # The writer never declared it: under an open model it may carry anything there.
            elif w_patterns or (
                w_extra is not False and _trial_fails(self, w_extra, r_props[name], depth)
            ):
                self.report(
                    where,
                    f"property {name!r} added to an open content model: "
                    f"{self.w_name} allows any value there, {self.r_name} "
                    f"constrains it",
                )
        if r_extra is not True and not (w_extra is False and not w_patterns):
            if r_extra is False:
                self.report(
                    join(path, "additionalProperties"),
                    "additionalProperties closed: "
                    f"{self.w_name} allows other properties, {self.r_name} not",
                )
            else:
                self.sub(w_extra, r_extra, join(path, "additionalProperties"), depth + 1)
        if _key(w_patterns) != _key(r_patterns) and r_patterns:
            self.report(
                join(path, "patternProperties"),
                "patternProperties differ between the versions: compatibility cannot be proven",
            )


def _trial_fails(walk: _Walk, w: Any, r: Any, depth: int) -> bool:
    return bool(walk._trial(w, r, depth, ""))


def _values_fit(w: dict[str, Any], r_types: frozenset[str]) -> bool:
    """Whether the writer's enum/const values all have a type the reader allows."""
    values = _values(w)
    return values is not None and all(_type_of(v) in r_types for v in values)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _effective(
    schema: dict[str, Any], inclusive: str, exclusive: str, upper: bool
) -> tuple[float, bool] | None:
    """The tightest bound of ``schema`` on one side: ``(value, exclusive)``, or None."""
    bounds: list[tuple[float, bool]] = []
    if isinstance(schema.get(inclusive), int | float):
        bounds.append((schema[inclusive], False))
    if isinstance(schema.get(exclusive), int | float):
        bounds.append((schema[exclusive], True))
    if not bounds:
        return None
    # Upper bound: the lowest value (exclusive beats inclusive at a tie); lower: the highest.
    if upper:
        return min(bounds, key=lambda b: (b[0], not b[1]))
    return max(bounds, key=lambda b: (b[0], b[1]))


def _is_multiple(value: float, base: float) -> bool:
    if base == 0:
        return False
    quotient = value / base
    return abs(quotient - round(quotient)) < 1e-9
