"""Bearer tokens and roles (eventfold.auth)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from eventfold.auth import (
    ROLES,
    Principal,
    TokenVerifier,
    issue_token,
    principal_from_claims,
)
from eventfold.errors import Forbidden, Unauthorized

SECRET = "unit-test-secret-" + "x" * 64


def raw_token(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "tenant": "acme",
        "roles": ["reader"],
        "exp": int(time.time()) + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def assert_unauthorized(verifier: TokenVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as exc:
        verifier.verify(token)
    assert exc.value.status == 401
    assert exc.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return exc.value


def test_issue_and_verify_round_trip() -> None:
    token = issue_token(SECRET, tenant="acme", roles=["reader", "writer"], subject="bob")
    principal = TokenVerifier(SECRET).verify(token)
    assert principal == Principal(
        subject="bob", tenant="acme", roles=frozenset({"reader", "writer"})
    )


def test_issued_token_carries_iat_and_exp_from_now_and_ttl() -> None:
    token = issue_token(SECRET, tenant="acme", roles=[], ttl_seconds=120, now=1_000_000)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["iat"] == 1_000_000
    assert claims["exp"] == 1_000_120
    assert claims["sub"] == "eventfold-cli"
    assert "iss" not in claims
    assert "aud" not in claims


def test_expired_token_is_401_with_www_authenticate() -> None:
    token = issue_token(SECRET, tenant="acme", roles=["reader"], now=time.time() - 7200)
    err = assert_unauthorized(TokenVerifier(SECRET), token)
    assert "expired" in err.detail
    assert 'error="invalid_token"' in err.headers["WWW-Authenticate"]


def test_token_expired_within_leeway_is_still_accepted() -> None:
    token = issue_token(
        SECRET, tenant="acme", roles=["reader"], ttl_seconds=60, now=time.time() - 65
    )
    assert TokenVerifier(SECRET).verify(token).tenant == "acme"


def test_token_signed_with_another_secret_is_401() -> None:
    token = issue_token("another-secret-another-secret-another!", tenant="acme", roles=["reader"])
    assert_unauthorized(TokenVerifier(SECRET), token)


def test_tampered_payload_is_401() -> None:
    token = issue_token(SECRET, tenant="acme", roles=["reader"])
    header, payload, sig = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"reader"', b'"admin"')
    ).decode()
    assert forged_payload != payload
    assert_unauthorized(TokenVerifier(SECRET), f"{header}.{forged_payload}.{sig}")


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "a.b", "....."])
def test_garbage_token_is_401(garbage: str) -> None:
    assert_unauthorized(TokenVerifier(SECRET), garbage)


def test_unsigned_alg_none_token_is_401() -> None:
    assert_unauthorized(TokenVerifier(SECRET), raw_token(good_claims(), secret="", alg="none"))


def test_other_hmac_algorithm_is_401() -> None:
    assert_unauthorized(TokenVerifier(SECRET), raw_token(good_claims(), alg="HS512"))


@pytest.mark.parametrize("missing", ["exp", "sub", "tenant"])
def test_missing_required_claim_is_401(missing: str) -> None:
    claims = good_claims()
    del claims[missing]
    assert_unauthorized(TokenVerifier(SECRET), raw_token(claims))


@pytest.mark.parametrize(
    "roles", ["reader", [1], ["reader", None], {"reader": True}, None, [["reader"]]]
)
def test_roles_must_be_a_list_of_strings(roles: Any) -> None:
    claims = good_claims()
    claims["roles"] = roles
    err = assert_unauthorized(TokenVerifier(SECRET), raw_token(claims))
    assert "roles" in err.detail


@pytest.mark.parametrize(("field", "value"), [("sub", 42), ("tenant", ["acme"])])
def test_sub_and_tenant_must_be_strings(field: str, value: Any) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims(good_claims(**{field: value}))


def test_roles_claim_may_be_absent() -> None:
    claims = good_claims()
    del claims["roles"]
    principal = TokenVerifier(SECRET).verify(raw_token(claims))
    assert principal.roles == frozenset()
    assert not principal.has_role("reader")


# role implication: writer ⊇ reader, admin ⊇ writer, platform-admin ⊇ admin
IMPLIED = {
    "reader": {"reader"},
    "writer": {"reader", "writer"},
    "admin": {"reader", "writer", "admin"},
    "platform-admin": {"reader", "writer", "admin", "platform-admin"},
}


@pytest.mark.parametrize("granted", ROLES)
@pytest.mark.parametrize("needed", ROLES)
def test_role_implication(granted: str, needed: str) -> None:
    principal = Principal("u", "acme", frozenset({granted}))
    assert principal.has_role(needed) is (needed in IMPLIED[granted])
    if needed in IMPLIED[granted]:
        principal.require(needed, "acme")
    else:
        with pytest.raises(Forbidden) as exc:
            principal.require(needed, "acme")
        assert exc.value.status == 403


def test_unknown_role_in_a_token_grants_nothing() -> None:
    principal = Principal("u", "acme", frozenset({"superuser"}))
    assert not principal.has_role("reader")


def test_require_with_another_tenant_is_forbidden_even_for_admin() -> None:
    principal = Principal("u", "acme", frozenset({"admin"}))
    with pytest.raises(Forbidden) as exc:
        principal.require("reader", "globex")
    assert "another tenant" in exc.value.detail


def test_require_without_tenant_checks_only_the_role() -> None:
    Principal("u", "acme", frozenset({"reader"})).require("reader")


def test_platform_admin_with_star_reaches_any_tenant() -> None:
    principal = Principal("root", "*", frozenset({"platform-admin"}))
    assert principal.is_platform_admin
    for tenant in ("acme", "globex", "zzz"):
        principal.require("admin", tenant)
        principal.require("platform-admin", tenant)


def test_platform_admin_role_bound_to_one_tenant_is_not_a_platform_admin() -> None:
    principal = Principal("u", "acme", frozenset({"platform-admin"}))
    assert not principal.is_platform_admin
    with pytest.raises(Forbidden):
        principal.require("reader", "globex")


def test_star_tenant_without_platform_admin_does_not_reach_a_tenant() -> None:
    principal = Principal("u", "*", frozenset({"writer"}))
    assert not principal.is_platform_admin
    with pytest.raises(Forbidden):
        principal.require("writer", "acme")


def test_issuer_and_audience_are_enforced_when_configured() -> None:
    verifier = TokenVerifier(SECRET, issuer="https://issuer", audience="eventfold")
    good = issue_token(
        SECRET, tenant="acme", roles=["reader"], issuer="https://issuer", audience="eventfold"
    )
    assert verifier.verify(good).tenant == "acme"
    for kwargs in (
        {},
        {"issuer": "https://issuer"},
        {"audience": "eventfold"},
        {"issuer": "https://evil", "audience": "eventfold"},
        {"issuer": "https://issuer", "audience": "other"},
    ):
        token = issue_token(SECRET, tenant="acme", roles=["reader"], **kwargs)
        assert_unauthorized(verifier, token)


def test_issuer_and_audience_are_ignored_when_not_configured() -> None:
    token = issue_token(SECRET, tenant="acme", roles=["reader"], issuer="i", audience="a")
    assert TokenVerifier(SECRET).verify(token).roles == frozenset({"reader"})


@pytest.mark.parametrize("roles", [["root"], ["reader", "owner"], ["Reader"]])
def test_issue_token_refuses_unknown_roles(roles: list[str]) -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        issue_token(SECRET, tenant="acme", roles=roles)


@pytest.mark.parametrize("ttl", [0, -1])
def test_issue_token_refuses_a_non_positive_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issue_token(SECRET, tenant="acme", roles=["reader"], ttl_seconds=ttl)
