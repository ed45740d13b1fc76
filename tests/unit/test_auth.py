"""Bearer tokens and roles (eventfold.auth)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from eventfold.auth import (
    ROLES,
    Principal,
    TokenVerifier,
    issue_token,
    principal_from_claims,
)
from eventfold.errors import Forbidden, Unauthorized
from eventfold.settings import Settings

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
    # platform-admin is a role of tenant "*" only (a tenant-bound one grants nothing).
    tenant = "*" if granted == "platform-admin" else "acme"
    principal = Principal("u", tenant, frozenset({granted}))
    assert principal.has_role(needed) is (needed in IMPLIED[granted])
    if needed in IMPLIED[granted]:
        principal.require(needed, "acme")
    else:
        with pytest.raises(Forbidden) as exc:
            principal.require(needed, "acme")
        assert exc.value.status == 403


@pytest.mark.parametrize("needed", ROLES)
def test_platform_admin_bound_to_a_tenant_grants_nothing(needed: str) -> None:
    principal = Principal("u", "acme", frozenset({"platform-admin"}))
    assert not principal.has_role(needed)
    for tenant in ("acme", None):
        with pytest.raises(Forbidden):
            principal.require(needed, tenant)
    # Beside real roles it adds nothing either.
    both = Principal("u", "acme", frozenset({"platform-admin", "reader"}))
    assert both.has_role("reader")
    assert not both.has_role("writer")


def test_tokens_bind_platform_admin_only_to_tenant_star() -> None:
    with pytest.raises(ValueError, match="only with tenant"):
        issue_token(SECRET, tenant="acme", roles=["platform-admin"])
    assert (
        TokenVerifier(SECRET)
        .verify(issue_token(SECRET, tenant="*", roles=["platform-admin"]))
        .is_platform_admin
    )


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


# RS256: a PEM public key, a JWKS file picked by kid, and no algorithm confusion.


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    doc: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**doc, "kid": kid, **extra}


def rs256(key: rsa.RSAPrivateKey, kid: str | None = None, **claims: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(good_claims(**claims), key, algorithm="RS256", headers=headers)


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return rsa_key(), rsa_key(), rsa_key()


def settings_with(tmp_path: Path, **kw: Any) -> Settings:
    return dataclasses.replace(Settings(home=tmp_path, jwt_secret=SECRET), **kw)


def test_rs256_with_a_pem_public_key(tmp_path: Path, keys: Any) -> None:
    good, other, _ = keys
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(good))
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_public_key_file=pem))
    assert verifier.verify(rs256(good)).tenant == "acme"
    assert verifier.verify(rs256(good, kid="any")).tenant == "acme"
    assert_unauthorized(verifier, rs256(other))
    # HS256 still works beside it.
    assert verifier.verify(raw_token(good_claims())).tenant == "acme"


def test_a_pem_file_without_an_rsa_key_stops_startup(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA"):
        TokenVerifier.from_settings(settings_with(tmp_path, jwt_public_key_file=pem))


def test_rs256_keys_of_a_jwks_are_picked_by_kid(tmp_path: Path, keys: Any) -> None:
    one, two, stranger = keys
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [jwk(one, "k1"), jwk(two, "k2")]}))
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_jwks_file=jwks))
    assert verifier.verify(rs256(one, "k1")).tenant == "acme"
    assert verifier.verify(rs256(two, "k2")).tenant == "acme"
    assert_unauthorized(verifier, rs256(one, "k2"))  # signed by another key than named
    assert_unauthorized(verifier, rs256(stranger, "k3"))  # unknown kid
    err = assert_unauthorized(verifier, rs256(one))  # no kid, two candidates
    assert "kid" in err.detail


def test_a_jwks_with_one_key_accepts_tokens_without_kid(tmp_path: Path, keys: Any) -> None:
    one, _, _ = keys
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [jwk(one, "only")]}))
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_jwks_file=jwks))
    assert verifier.verify(rs256(one)).tenant == "acme"


def test_jwks_keys_for_other_uses_are_ignored(tmp_path: Path, keys: Any) -> None:
    one, two, _ = keys
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(
        orjson.dumps({"keys": [jwk(one, "enc", use="enc"), jwk(two, "ps", alg="PS256")]})
    )
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_jwks_file=jwks))
    assert_unauthorized(verifier, rs256(one, "enc"))
    assert_unauthorized(verifier, rs256(two, "ps"))


def test_a_rotated_jwks_is_read_again_for_an_unknown_kid(tmp_path: Path, keys: Any) -> None:
    one, two, _ = keys
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [jwk(one, "old")]}))
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_jwks_file=jwks))
    assert_unauthorized(verifier, rs256(two, "new"))
    jwks.write_bytes(orjson.dumps({"keys": [jwk(one, "old"), jwk(two, "new")]}))
    os.utime(jwks, (time.time() + 5, time.time() + 5))  # a visibly newer file
    assert verifier.verify(rs256(two, "new")).tenant == "acme"
    jwks.unlink()  # a broken rotation keeps the keys known so far
    assert verifier.verify(rs256(one, "old")).tenant == "acme"
    assert_unauthorized(verifier, rs256(two, "gone"))


def test_rs256_without_a_configured_key_is_401(keys: Any) -> None:
    assert_unauthorized(TokenVerifier(SECRET), rs256(keys[0]))


def test_the_public_key_is_no_hmac_secret(tmp_path: Path, keys: Any) -> None:
    """Algorithm confusion: an HS256 token 'signed' with the public key must fail."""
    good, _, _ = keys
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(good))
    verifier = TokenVerifier.from_settings(settings_with(tmp_path, jwt_public_key_file=pem))
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    payload = jwt.utils.base64url_encode(orjson.dumps(good_claims()))
    signing_input = header + b"." + payload
    sig = jwt.utils.base64url_encode(
        hmac.new(public_pem(good), signing_input, hashlib.sha256).digest()
    )
    assert_unauthorized(verifier, (signing_input + b"." + sig).decode())


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "none"])
def test_other_algorithms_are_401(alg: str) -> None:
    header = jwt.utils.base64url_encode(orjson.dumps({"alg": alg, "typ": "JWT"})).decode()
    payload = jwt.utils.base64url_encode(orjson.dumps(good_claims())).decode()
    assert_unauthorized(TokenVerifier(SECRET), f"{header}.{payload}.c2ln")


def test_expired_rs256_token_and_issuer_audience(tmp_path: Path, keys: Any) -> None:
    good, _, _ = keys
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(good))
    settings = settings_with(
        tmp_path, jwt_public_key_file=pem, jwt_issuer="https://idp", jwt_audience="eventfold"
    )
    verifier = TokenVerifier.from_settings(settings)
    ok = {"iss": "https://idp", "aud": "eventfold"}
    assert verifier.verify(rs256(good, **ok)).tenant == "acme"
    err = assert_unauthorized(verifier, rs256(good, exp=int(time.time()) - 3600, **ok))
    assert "expired" in err.detail
    assert_unauthorized(verifier, rs256(good, iss="https://evil", aud="eventfold"))
    assert_unauthorized(verifier, rs256(good))


def test_leeway_comes_from_the_settings(tmp_path: Path) -> None:
    token = raw_token(good_claims(exp=int(time.time()) - 20))
    strict = TokenVerifier.from_settings(settings_with(tmp_path, jwt_leeway_seconds=5))
    assert_unauthorized(strict, token)
    assert TokenVerifier.from_settings(settings_with(tmp_path)).verify(token).tenant == "acme"


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import eventfold.auth as auth_module

    now = time.time()
    verifier = TokenVerifier(SECRET, leeway=0)
    token = issue_token(SECRET, tenant="acme", roles=["reader"], ttl_seconds=60, now=now)
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # the second check is answered from memory
    monkeypatch.setattr(auth_module.time, "time", lambda: now + 61)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize("token", ["\udcff\udcfe", "\udced\udca0\udc80.e30.e30", "é.e30.e30"])
def test_a_token_that_is_not_ascii_is_a_401(token: str) -> None:
    # Header bytes that are not UTF-8 arrive as surrogate escapes; PyJWT cannot encode them.
    assert str(assert_unauthorized(TokenVerifier(SECRET), token)) == "malformed token"
