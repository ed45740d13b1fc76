"""The condition operators of a trigger's ``when`` and a step's ``if``.

A condition set maps a field to ``{operator: operand, ...}``; every operator of
every field must hold. A field of an ``if`` is a JSON pointer into the run context
(``/record/data/total``); a field of a ``when`` is a top-level key of the
record's ``data`` or a JSON pointer into that ``data`` (``/customer/tier``). Comparisons (``gt`` …)
hold between two numbers or two strings only; ``eq``/``ne`` compare JSON
values (``1 == 1.0``, ``true != 1``); ``exists`` holds when the field is
present and not null; a missing field satisfies ``ne`` and ``exists: false``
only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventfold.errors import FieldError
from eventfold.workflows.context import MISSING, escape, resolve_pointer

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists")


def _same(a: Any, b: Any) -> bool:
    # JSON equality: bools are not numbers, 1 equals 1.0, containers compare deeply.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _comparable(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return numbers or (isinstance(a, str) and isinstance(b, str))


def _compare(check: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def op(value: Any, operand: Any) -> bool:
        return value is not MISSING and _comparable(value, operand) and check(value, operand)

    return op


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, o: v is not MISSING and _same(v, o),
    "ne": lambda v, o: v is MISSING or not _same(v, o),
    "gt": _compare(lambda v, o: v > o),
    "gte": _compare(lambda v, o: v >= o),
    "lt": _compare(lambda v, o: v < o),
    "lte": _compare(lambda v, o: v <= o),
    "in": lambda v, o: v is not MISSING and any(_same(v, x) for x in o),
    "exists": lambda v, o: (v is not MISSING and v is not None) is bool(o),
}


def field_pointer(field: str, *, data_pointer: str | None) -> str:
    """The JSON pointer of ``field``. In a ``when`` (``data_pointer``: where the record's
    data is), a key of the data or a pointer into it; in an ``if`` (None), a pointer."""
    if data_pointer is None:
        return field
    if field.startswith("/"):
        return data_pointer + field
    return f"{data_pointer}/{escape(field)}"


def holds(conditions: Mapping[str, Mapping[str, Any]], doc: Any, *, data: str | None) -> bool:
    """Whether every condition holds over ``doc`` (``data``: see :func:`field_pointer`)."""
    for field, ops in conditions.items():
        value = resolve_pointer(doc, field_pointer(field, data_pointer=data))
        for name, operand in ops.items():
            if not _OPS[name](value, operand):
                return False
    return True


def check(conditions: Any, path: str, *, pointers_only: bool) -> list[FieldError]:
    """Every problem of a condition set at ``path`` (a JSON pointer), as field errors."""
    if not isinstance(conditions, dict):
        return [FieldError(path, "must be an object of field: {operator: operand}")]
    errors: list[FieldError] = []
    for field, ops in conditions.items():
        here = f"{path}/{escape(field)}"
        if pointers_only and not field.startswith("/"):
            errors.append(FieldError(here, "must be a JSON pointer into the run context"))
        elif not field:
            errors.append(FieldError(here, "must name a field"))
        if not isinstance(ops, dict) or not ops:
            errors.append(
                FieldError(here, f"must be an object of operators ({', '.join(OPERATORS)})")
            )
            continue
        for name, operand in ops.items():
            at = f"{here}/{escape(name)}"
            if name not in _OPS:
                errors.append(FieldError(at, f"unknown operator; known: {', '.join(OPERATORS)}"))
            elif name == "in" and not isinstance(operand, list):
                errors.append(FieldError(at, "in takes a list"))
            elif name == "exists" and not isinstance(operand, bool):
                errors.append(FieldError(at, "exists takes true or false"))
            elif name in ("gt", "gte", "lt", "lte") and not (
                isinstance(operand, str)
                or (isinstance(operand, int | float) and not isinstance(operand, bool))
            ):
                errors.append(FieldError(at, f"{name} takes a number or a string"))
    return errors
