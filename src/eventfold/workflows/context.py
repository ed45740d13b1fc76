"""The run context and the references into it.

The context is ``{"trigger": <CloudEvent>, "record": {"id", "collection",
"version", "data"}, "steps": {<step id>: {"output": ...}}}``. A step reads it
with ``{"$from": "<JSON pointer>"}`` (an object with that one key: replaced by
the value, typed; null when absent) or ``${<JSON pointer>}`` inside a string
(its text: a string as is, absent or null as nothing, anything else as
compact JSON).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

#: The value of a pointer that names nothing.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
#: ``${/json/pointer}`` inside a string.
TEMPLATE = re.compile(r"\$\{([^}]*)\}")
#: What a reference may start with.
ROOTS = ("trigger", "record", "steps")


def escape(token: str) -> str:
    """One JSON pointer reference token (RFC 6901 ``~0`` / ``~1``)."""
    return token.replace("~", "~0").replace("/", "~1")


def tokens(pointer: str) -> list[str]:
    """The reference tokens of ``pointer`` (``""`` is the whole document)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """The value ``pointer`` names in ``doc``, or :data:`MISSING`."""
    try:
        parts = tokens(pointer)
    except ValueError:
        return MISSING
    node = doc
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                return MISSING
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or (part != "0" and part.startswith("0")):
                return MISSING
            index = int(part)
            if index >= len(node):
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def _text(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def render(template: Any, context: Any) -> Any:
    """``template`` with every ``$from`` and ``${…}`` replaced from ``context``."""
    if isinstance(template, str):
        if "${" not in template:
            return template
        return TEMPLATE.sub(lambda m: _text(resolve_pointer(context, m.group(1))), template)
    if isinstance(template, list):
        return [render(item, context) for item in template]
    if isinstance(template, dict):
        if len(template) == 1 and "$from" in template and isinstance(template["$from"], str):
            value = resolve_pointer(context, template["$from"])
            return None if value is MISSING else value
        return {key: render(value, context) for key, value in template.items()}
    return template


def references(template: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(JSON pointer into template, referenced pointer)`` in ``template``."""
    if isinstance(template, str):
        for match in TEMPLATE.finditer(template):
            yield path, match.group(1)
    elif isinstance(template, list):
        for i, item in enumerate(template):
            yield from references(item, f"{path}/{i}")
    elif isinstance(template, dict):
        if len(template) == 1 and "$from" in template:
            ref = template["$from"]
            yield f"{path}/$from", ref if isinstance(ref, str) else ""
            return
        for key, value in template.items():
            yield from references(value, f"{path}/{escape(key)}")


def check_reference(ref: str, earlier: list[str]) -> str | None:
    """Why ``ref`` cannot be read by a step after the steps ``earlier`` (None: it can)."""
    try:
        parts = tokens(ref)
    except ValueError:
        return "must be a JSON pointer (starting with /)"
    if not parts or parts[0] not in ROOTS:
        return "must start with /trigger, /record or /steps/<step id>/output"
    if parts[0] == "steps":
        if len(parts) < 2 or parts[1] not in earlier:
            named = parts[1] if len(parts) > 1 else ""
            return f"names step {named!r}, which does not come earlier"
        if len(parts) > 2 and parts[2] != "output":
            return "a step's context is /steps/<step id>/output"
    return None
