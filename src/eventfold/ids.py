"""Identifier rules from CONTRACT.md, checked before any identifier reaches SQL,
Redis or S3."""

from __future__ import annotations

import re
from contextvars import ContextVar

from eventfold.errors import FieldError, ValidationFailed

TENANT_ID = re.compile(r"[a-z][a-z0-9_]{2,39}")
COLLECTION = re.compile(r"[a-z][a-z0-9_]{0,62}")
RECORD_ID = re.compile(r"[A-Za-z0-9._~:-]{1,128}")
#: Top-level data fields usable in ``filter[FIELD]``.
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_RULES = {
    "tenant": (TENANT_ID, "^[a-z][a-z0-9_]{2,39}$"),
    "collection": (COLLECTION, "^[a-z][a-z0-9_]{0,62}$"),
    "id": (RECORD_ID, "^[A-Za-z0-9._~:-]{1,128}$"),
    "field": (FIELD_NAME, "^[A-Za-z_][A-Za-z0-9_]{0,62}$"),
}


def is_valid(kind: str, value: object) -> bool:
    """Whether ``value`` is a well-formed identifier of ``kind``."""
    pattern, _ = _RULES[kind]
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def check(kind: str, value: str, *, path: str | None = None) -> str:
    """Return ``value`` when it is a valid ``kind`` identifier, else raise a 422."""
    if is_valid(kind, value):
        return value
    _, shown = _RULES[kind]
    where = path or f"/{kind}"
    raise ValidationFailed(
        f"invalid {kind} identifier",
        errors=[FieldError(where, f"must match {shown}")],
    )


def tenant_schema(tenant: str) -> str:
    """The PostgreSQL schema holding one tenant's projection, already quoted.

    The tenant id pattern admits only ``[a-z0-9_]``, so quoting is belt and
    braces: even ``pg_catalog`` as a tenant id becomes ``"t_pg_catalog"``.
    """
    check("tenant", tenant)
    redirect = SCHEMA_REDIRECT.get()
    if redirect is not None and redirect[0] == tenant:
        return f'"{redirect[1]}"'
    return f'"t_{tenant}"'


#: ``(tenant, schema)``: inside a rebuild, the tenant's projection code writes into
#: a shadow schema instead of the live one (blue-green replay reuses the fold as is).
SCHEMA_REDIRECT: ContextVar[tuple[str, str] | None] = ContextVar("schema_redirect", default=None)


def shadow_schema_name(tenant: str, suffix: str) -> str:
    """An unquoted side schema of ``tenant`` (``t_{tenant}__{suffix}``), for rebuilds."""
    check("tenant", tenant)
    if not suffix.isalnum():
        raise ValueError("schema suffix must be alphanumeric")
    return f"t_{tenant}__{suffix}"


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
