"""Bearer tokens over HTTP: RS256 (PEM key and JWKS) beside HS256; expired and forged ones."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from entrypoints.bootstrap import Parts, create_app
from eventfold.auth import issue_token
from eventfold.settings import Settings
from tests.integration.conftest import TenantApi

pytestmark = pytest.mark.integration

R = "/collections/things/records"


@dataclasses.dataclass
class Rsa:
    client: TestClient[Any, Any]
    settings: Settings
    pem_key: rsa.RSAPrivateKey
    jwks_key: rsa.RSAPrivateKey


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rsa_app(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rsa]:
    """An API instance trusting one PEM public key and a JWKS with kid ``k1``."""
    folder: Path = tmp_path_factory.mktemp("keys")
    pem_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "pub.pem").write_bytes(
        pem_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwk = {**RSAAlgorithm.to_jwk(jwks_key.public_key(), as_dict=True), "kid": "k1"}
    (folder / "jwks.json").write_bytes(orjson.dumps({"keys": [jwk]}))
    settings = dataclasses.replace(
        stack, jwt_public_key_file=folder / "pub.pem", jwt_jwks_file=folder / "jwks.json"
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, Parts(api=True, ingest=False, processors=())))
    )
    await client.start_server()
    try:
        yield Rsa(client, settings, pem_key, jwks_key)
    finally:
        await client.close()


def claims(tenant: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "svc",
        "tenant": tenant,
        "roles": ["reader"],
        "iat": now,
        "exp": now + 300,
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_rs256_and_hs256_tokens_are_accepted(rsa_app: Rsa, tenant: TenantApi) -> None:
    path = tenant.path(R)
    by_pem = jwt.encode(claims(tenant.id), rsa_app.pem_key, algorithm="RS256")
    by_jwks = jwt.encode(
        claims(tenant.id), rsa_app.jwks_key, algorithm="RS256", headers={"kid": "k1"}
    )
    hs = issue_token(rsa_app.settings.jwt_secret, tenant=tenant.id, roles=["reader"])
    for token in (by_pem, by_jwks, hs):
        resp = await rsa_app.client.get(path, headers=bearer(token))
        assert resp.status == 200, await resp.text()


async def test_expired_and_forged_tokens_are_401(rsa_app: Rsa, tenant: TenantApi) -> None:
    path = tenant.path(R)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = jwt.encode(claims(tenant.id), rsa_app.jwks_key, algorithm="RS256", headers={"kid": "k1"})
    header, _payload, sig = good.split(".")
    elevated = jwt.utils.base64url_encode(orjson.dumps(claims(tenant.id, roles=["admin"]))).decode()
    bad = {
        "expired": jwt.encode(
            claims(tenant.id, exp=int(time.time()) - 3600),
            rsa_app.jwks_key,
            algorithm="RS256",
            headers={"kid": "k1"},
        ),
        "other key": jwt.encode(
            claims(tenant.id), stranger, algorithm="RS256", headers={"kid": "k1"}
        ),
        "unknown kid": jwt.encode(
            claims(tenant.id), stranger, algorithm="RS256", headers={"kid": "k9"}
        ),
        "payload swapped": f"{header}.{elevated}.{sig}",
        "alg none": jwt.encode(claims(tenant.id), None, algorithm="none"),
    }
    for what, token in bad.items():
        resp = await rsa_app.client.get(path, headers=bearer(token))
        assert resp.status == 401, what
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), what
        assert resp.content_type == "application/problem+json", what
    detail = (await (await rsa_app.client.get(path, headers=bearer(bad["expired"]))).json())[
        "detail"
    ]
    assert "expired" in detail
