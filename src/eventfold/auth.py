"""Bearer tokens (JWT, HS256) and the roles they grant.

A :class:`Principal` is what every route sees of the caller: who, which tenant
(``*`` for platform admins) and which roles.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from eventfold.errors import Forbidden, Unauthorized

ROLES = ("reader", "writer", "admin", "platform-admin")
ALL_TENANTS = "*"
#: A role implies every role before it: writer can read, admin can write.
_RANK = {role: rank for rank, role in enumerate(ROLES)}
LEEWAY_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    subject: str
    tenant: str
    roles: frozenset[str]

    @property
    def is_platform_admin(self) -> bool:
        """Platform admins (tenant ``*``) reach every tenant."""
        return self.tenant == ALL_TENANTS and "platform-admin" in self.roles

    def has_role(self, role: str) -> bool:
        """Whether any granted role implies ``role``."""
        need = _RANK[role]
        return any(_RANK.get(r, -1) >= need for r in self.roles)

    def require(self, role: str, tenant: str | None = None) -> None:
        """Raise 403 unless this principal holds ``role`` (for ``tenant``, if given)."""
        # Tenant "*" reaches every tenant only together with the platform-admin role.
        if tenant is not None and self.tenant != tenant and not self.is_platform_admin:
            raise Forbidden("these credentials are for another tenant")
        if not self.has_role(role):
            raise Forbidden(f"this route needs the {role} role")


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks bearer tokens against the configured key, issuer and audience."""

    secret: str
    issuer: str | None = None
    audience: str | None = None

    def verify(self, token: str) -> Principal:
        """Decode ``token``; raise 401 :class:`Unauthorized` on any defect."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub", "tenant"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, object]) -> Principal:
    """Build a :class:`Principal` from verified claims; malformed claims are a 401."""
    sub, tenant, roles = claims.get("sub"), claims.get("tenant"), claims.get("roles", [])
    if not isinstance(sub, str) or not isinstance(tenant, str):
        raise Unauthorized("the token's sub and tenant claims must be strings")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("the token's roles claim must be a list of strings")
    return Principal(subject=sub, tenant=tenant, roles=frozenset(roles))


def issue_token(
    secret: str,
    *,
    tenant: str,
    roles: Iterable[str],
    subject: str = "eventfold-cli",
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a token (what ``eventfold token`` prints)."""
    roles = list(roles)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(unknown)} (known: {', '.join(ROLES)})")
    if ttl_seconds <= 0:
        raise ValueError("ttl must be positive")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "tenant": tenant,
        "roles": roles,
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
