"""Bearer tokens (JWT: HS256, and RS256 with configured public keys) and the roles they grant.

A :class:`Principal` is what every route sees of the caller: who, which tenant
(``*`` for platform admins) and which roles. API keys (:mod:`eventfold.apikeys`)
end in the same :class:`Principal`.

The algorithm a token names picks the key, and each key is used with its own
algorithm only: HS256 with ``EVENTFOLD_JWT_SECRET``; RS256 with the PEM public
key of ``EVENTFOLD_JWT_PUBLIC_KEY_FILE`` or the JWKS of ``EVENTFOLD_JWT_JWKS_FILE``
(the key whose ``kid`` the token names; otherwise the PEM key, or the JWKS's
only key). So an RS256 public key can never serve as an HMAC secret
(algorithm confusion), and ``none`` or any other algorithm is a 401. The JWKS
file is read again when a token names a ``kid`` it lacks and the file changed
since (key rotation without a restart).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import RSAAlgorithm

from eventfold import actors
from eventfold.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from eventfold.settings import Settings

log = logging.getLogger("eventfold.auth")

ROLES = ("reader", "writer", "admin", "platform-admin")
PLATFORM_ADMIN = "platform-admin"
ALL_TENANTS = "*"
#: A role implies every role before it: writer can read, admin can write.
_RANK = {role: rank for rank, role in enumerate(ROLES)}
LEEWAY_SECONDS = 30
_VERIFIED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    subject: str
    tenant: str
    roles: frozenset[str]
    #: What authenticated the caller: ``user`` (a bearer token) or ``apikey``.
    kind: str = "user"

    @property
    def actor(self) -> str:
        """The ``actor`` its events carry: ``user:<sub>``, or the API key's ``apikey:<id>``."""
        return self.subject if self.kind == "apikey" else actors.user(self.subject)

    @property
    def is_platform_admin(self) -> bool:
        """Platform admins (tenant ``*``) reach every tenant."""
        return self.tenant == ALL_TENANTS and PLATFORM_ADMIN in self.roles

    def has_role(self, role: str) -> bool:
        """Whether any granted role implies ``role``.

        ``platform-admin`` counts only with tenant ``*``: bound to one tenant it
        grants nothing (not even that tenant's roles), wherever it is checked.
        """
        need = _RANK[role]
        return any(_RANK.get(r, -1) >= need for r in self.roles if self._holds(r))

    def _holds(self, role: str) -> bool:
        return role != PLATFORM_ADMIN or self.tenant == ALL_TENANTS

    def require(self, role: str, tenant: str | None = None) -> None:
        """Raise 403 unless this principal holds ``role`` (for ``tenant``, if given)."""
        # Tenant "*" reaches every tenant only together with the platform-admin role.
        if tenant is not None and self.tenant != tenant and not self.is_platform_admin:
            raise Forbidden("these credentials are for another tenant")
        if not self.has_role(role):
            raise Forbidden(f"this route needs the {role} role")


class TokenVerifier:
    """Checks bearer tokens against the configured keys, issuer and audience."""

    def __init__(
        self,
        secret: str,
        issuer: str | None = None,
        audience: str | None = None,
        *,
        public_key: Any = None,
        jwks_file: Path | None = None,
        leeway: int = LEEWAY_SECONDS,
    ) -> None:
        self.secret = secret
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        #: The RS256 key of a PEM file (used for tokens without a ``kid`` it lacks).
        self._public_key = public_key
        self._jwks_file = jwks_file
        self._jwks: dict[str, Any] = {}
        self._jwks_mtime: float | None = None
        #: Tokens verified already, with their expiry: a signed token never
        #: changes, so checking its signature once is enough (bounded, FIFO).
        self._verified: dict[str, tuple[Principal, float]] = {}
        if jwks_file is not None:
            self._load_jwks()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier the settings describe (reads the key files; a bad file stops startup)."""
        public_key = None
        if settings.jwt_public_key_file is not None:
            public_key = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            if not isinstance(public_key, RSAPublicKey):
                raise ValueError(f"{settings.jwt_public_key_file} does not hold an RSA public key")
        return cls(
            settings.jwt_secret,
            settings.jwt_issuer,
            settings.jwt_audience,
            public_key=public_key,
            jwks_file=settings.jwt_jwks_file,
            leeway=settings.jwt_leeway_seconds,
        )

    def verify(self, token: str) -> Principal:
        """Decode ``token``; raise 401 :class:`Unauthorized` on any defect.

        A token seen before is answered from memory until it expires (a key
        removed from the JWKS file stops new tokens, not ones already checked).
        """
        seen = self._verified.get(token)
        if seen is not None:
            principal, expires = seen
            if time.time() <= expires + self.leeway:
                return principal
            del self._verified[token]
            raise Unauthorized("the token has expired")
        principal, expires = self._decode(token)
        if len(self._verified) >= _VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        # A JWT is base64url and dots; header bytes that are not UTF-8 reach here as
        # surrogate escapes, which PyJWT fails to encode (a 500 instead of a 401).
        if not token.isascii():
            raise Unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256" and self.secret:
                key: Any = self.secret
            elif alg == "RS256":
                key = self._rsa_key(header.get("kid"))
            else:
                raise jwt.InvalidAlgorithmError(f"the algorithm {alg!r} is not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "tenant"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return principal_from_claims(claims), float(claims["exp"])

    def _rsa_key(self, kid: object) -> Any:
        """The key for an RS256 token: the JWKS key it names, else the PEM key, else
        the JWKS's only key (for a token without ``kid``)."""
        if kid is not None and not isinstance(kid, str):
            raise jwt.InvalidTokenError("kid must be a string")
        if kid is not None:
            if kid not in self._jwks and self._jwks_file is not None:
                self._reload_jwks()  # rotated since startup?
            if kid in self._jwks:
                return self._jwks[kid]
        if self._public_key is not None:
            return self._public_key
        if kid is not None:
            raise jwt.InvalidTokenError(f"no RS256 key with kid {kid!r}")
        if len(self._jwks) != 1:
            raise jwt.InvalidTokenError(
                "no RS256 key is configured"
                if not self._jwks
                else "the token names no kid and the JWKS holds several keys"
            )
        return next(iter(self._jwks.values()))

    def _reload_jwks(self) -> None:
        try:
            self._load_jwks()
        except (OSError, ValueError, jwt.InvalidKeyError) as exc:
            # A file being rewritten or removed: keep the keys known so far.
            log.warning("JWKS file not readable, keeping its keys", extra={"error": repr(exc)})

    def _load_jwks(self) -> None:
        """(Re)read the JWKS file when it changed; its RSA signing keys by ``kid``."""
        assert self._jwks_file is not None
        mtime = os.stat(self._jwks_file).st_mtime
        if mtime == self._jwks_mtime:
            return
        doc = orjson.loads(self._jwks_file.read_bytes())
        keys: dict[str, Any] = {}
        for jwk in doc.get("keys", []) if isinstance(doc, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
                continue
            if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
                continue
            keys[str(jwk.get("kid", ""))] = RSAAlgorithm.from_jwk(jwk)
        self._jwks, self._jwks_mtime = keys, mtime


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
    if PLATFORM_ADMIN in roles and tenant != ALL_TENANTS:
        raise ValueError(f"{PLATFORM_ADMIN} is granted only with tenant '{ALL_TENANTS}'")
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
