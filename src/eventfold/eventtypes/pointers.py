"""RFC 6901 JSON pointers: parsing, reading and writing inside plain JSON values."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

#: A value a pointer did not reach (distinct from JSON null).
MISSING: Any = object()


@lru_cache(maxsize=4096)
def parse(pointer: str) -> tuple[str, ...]:
    """The reference tokens of ``pointer`` (``""`` is the whole document); ValueError if bad.

    Cached: the same few pointers of a type's projection and upcast come with every event.
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer is empty or starts with /")
    parts = pointer[1:].split("/")
    for part in parts:
        rest = part.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise ValueError("~ must be followed by 0 or 1 in a JSON pointer")
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in parts)


def escape(token: str) -> str:
    """``token`` as one reference token of a pointer."""
    return token.replace("~", "~0").replace("/", "~1")


def join(base: str, *tokens: object) -> str:
    """``base`` extended by ``tokens`` (escaped)."""
    return base + "".join("/" + escape(str(t)) for t in tokens)


def get(doc: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` in ``doc``, or :data:`MISSING`."""
    node = doc
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                return MISSING
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or (len(part) > 1 and part[0] == "0") or int(part) >= len(node):
                return MISSING
            node = node[int(part)]
        else:
            return MISSING
    return node
