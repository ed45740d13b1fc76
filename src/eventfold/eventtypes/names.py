"""Names of tenant event types and the ``dataschema`` URIs of their versions."""

from __future__ import annotations

import re
from functools import lru_cache

#: Dotted lower-case: at least two segments, each a letter then letters, digits, ``_`` or ``-``.
TYPE_NAME_RULE = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$"
_TYPE_NAME = re.compile(TYPE_NAME_RULE)
#: The longest type name (the envelope's ``type`` allows 128 characters).
MAX_TYPE_NAME = 128
#: Prefixes of the built-in types (and of types the platform may add): never a tenant's.
BUILTIN_PREFIXES = (
    "record.", "tenant.", "workflow.", "apikey.", "webhook.", "integration.", "eventtype.",
)  # fmt: skip
#: Where a tenant registers its types (named by errors about unregistered types).
REGISTRATION_ROUTE = "POST /v1/tenants/{tenant}/event-types"

_DATASCHEMA = re.compile(r"(?:^|/)event-types/([^/]+)/versions/([1-9][0-9]{0,8})$")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a tenant event type, or None when it can."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TYPE_NAME:
        return f"a type name is a string of 1 to {MAX_TYPE_NAME} characters"
    if not _TYPE_NAME.fullmatch(name):
        return f"must be dotted lower-case such as invoice.paid ({TYPE_NAME_RULE})"
    for prefix in BUILTIN_PREFIXES:
        if name.startswith(prefix):
            return f"{prefix}* is reserved for built-in types"
    return None


@lru_cache(maxsize=4096)
def is_custom(name: str) -> bool:
    """Whether ``name`` is a possible tenant type (well-formed, no built-in prefix)."""
    return name_problem(name) is None


def schema_uri(tenant: str, type_name: str, version: int) -> str:
    """The ``dataschema`` of ``version``: the route that serves its schema."""
    return f"/v1/tenants/{tenant}/event-types/{type_name}/versions/{version}"


def dataschema_version(uri: str, type_name: str, tenant: str) -> int:
    """The version a ``dataschema`` names for an event of ``type_name``.

    Accepts the route (:func:`schema_uri`), with or without scheme and host, or
    any URI ending in ``event-types/{type}/versions/{n}``. Raises ValueError
    (saying why) for another type, another tenant or another shape.
    """
    found = _DATASCHEMA.search(uri.split("?", 1)[0].split("#", 1)[0])
    if found is None:
        raise ValueError("must name a version: …/event-types/{type}/versions/{n}")
    if found.group(1) != type_name:
        raise ValueError(f"names type {found.group(1)}, not the event's type {type_name}")
    marker = "/tenants/"
    if marker in uri and f"{marker}{tenant}/" not in uri:
        raise ValueError("names another tenant's event type")
    return int(found.group(2))
