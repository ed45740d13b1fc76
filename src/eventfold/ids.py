"""Identifier rules from CONTRACT.md, checked before any identifier reaches SQL,
Redis or S3."""

from __future__ import annotations

import re

from eventfold.errors import FieldError, ValidationFailed

#: A tenant id: ``^[a-z][a-z0-9_]{2,39}$`` without two underscores in a row (``__`` is
#: reserved for internal names). Written without a lookahead, which neither pydantic's
#: regex engine nor every JSON Schema tool takes; the length is checked apart
#: (:data:`TENANT_ID_LENGTH`).
TENANT_ID = re.compile(r"[a-z](?:_?[a-z0-9])*_?")
TENANT_ID_LENGTH = (3, 40)
TENANT_ID_RULE = "^[a-z][a-z0-9_]{2,39}$ without two underscores in a row"
COLLECTION = re.compile(r"[a-z][a-z0-9_]{0,62}")
RECORD_ID = re.compile(r"[A-Za-z0-9._~:-]{1,128}")
#: Top-level data fields usable in ``filter[FIELD]``.
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: kind → (pattern, length bounds, the rule as a 422 states it).
_RULES = {
    "tenant": (TENANT_ID, TENANT_ID_LENGTH, f"must match {TENANT_ID_RULE}"),
    "collection": (COLLECTION, (1, 63), "must match ^[a-z][a-z0-9_]{0,62}$"),
    "id": (RECORD_ID, (1, 128), "must match ^[A-Za-z0-9._~:-]{1,128}$"),
    "field": (FIELD_NAME, (1, 63), "must match ^[A-Za-z_][A-Za-z0-9_]{0,62}$"),
}

#: Every schema that is not a tenant's own starts with this (``ef__<purpose>__<tenant>``).
#: Tenant schemas are ``t_<tenant>``, so no tenant id can name an internal schema, and
#: none can hold ``__`` either: a rebuild's scratch schema is never a live one.
INTERNAL_SCHEMA_PREFIX = "ef__"


def is_valid(kind: str, value: object) -> bool:
    """Whether ``value`` is a well-formed identifier of ``kind``."""
    pattern, (shortest, longest), _ = _RULES[kind]
    return (
        isinstance(value, str)
        and shortest <= len(value) <= longest
        and pattern.fullmatch(value) is not None
    )


def check(kind: str, value: str, *, path: str | None = None) -> str:
    """Return ``value`` when it is a valid ``kind`` identifier, else raise a 422."""
    if is_valid(kind, value):
        return value
    _, _, rule = _RULES[kind]
    where = path or f"/{kind}"
    raise ValidationFailed(f"invalid {kind} identifier", errors=[FieldError(where, rule)])


def tenant_schema(tenant: str) -> str:
    """The PostgreSQL schema holding one tenant's projection, already quoted.

    The tenant id pattern admits only ``[a-z0-9_]``, so quoting is belt and
    braces: even ``pg_catalog`` as a tenant id becomes ``"t_pg_catalog"``.
    """
    check("tenant", tenant)
    return f'"t_{tenant}"'


def shadow_schema_name(tenant: str, suffix: str) -> str:
    """An unquoted internal schema of ``tenant`` for ``suffix`` (a rebuild's shadow, ...).

    ``ef__{suffix}__{tenant}``: under :data:`INTERNAL_SCHEMA_PREFIX`, out of every
    tenant's reach (``t_{tenant}__verify`` used to be the live schema of a tenant
    ``{tenant}__verify``, dropped by a verify of ``{tenant}``). The suffix holds no
    ``_``, so two (suffix, tenant) pairs never make one name.
    """
    check("tenant", tenant)
    if not (suffix.isascii() and suffix.isalnum()):
        raise ValueError("schema suffix must be alphanumeric")
    return f"{INTERNAL_SCHEMA_PREFIX}{suffix}__{tenant}"


def tenant_role(tenant: str) -> str:
    """The tenant's NOLOGIN database role, already quoted: reads run ``SET LOCAL ROLE`` to it.

    Built, like :func:`tenant_schema`, only from a validated tenant id, so
    ``pg_catalog`` as a tenant id becomes ``"ef_t_pg_catalog"`` (45 characters
    at most, under PostgreSQL's 63-byte identifier limit).
    """
    check("tenant", tenant)
    return f'"ef_t_{tenant}"'


def split_subject(subject: str) -> tuple[str, str]:
    """``collection/id`` of a record event's subject; raises 422 when malformed."""
    collection, sep, record_id = subject.partition("/")
    if not sep or not is_valid("collection", collection) or not is_valid("id", record_id):
        raise ValidationFailed(
            "a record event's subject must be {collection}/{id}",
            errors=[FieldError("/subject", "must be {collection}/{id} with valid identifiers")],
        )
    return collection, record_id
