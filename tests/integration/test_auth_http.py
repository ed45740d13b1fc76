"""Authentication and roles on every route, per CONTRACT.md."""

from __future__ import annotations

import time

import jwt
import pytest

from eventfold.auth import issue_token
from tests.conftest import new_tenant_id
from tests.integration.conftest import Api, TenantApi

R = "/collections/things/records"
OTHER_SECRET = "a-different-secret-of-enough-length-0123"


async def test_missing_and_bad_credentials_are_401(api: Api, tenant: TenantApi) -> None:
    path = tenant.path(R)
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {issue_token(OTHER_SECRET, tenant=tenant.id, roles=[])}"},
    ):
        resp = await api.client.get(path, headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.content_type == "application/problem+json"


async def test_expired_token_is_401(api: Api, tenant: TenantApi) -> None:
    old = issue_token(
        api.settings.jwt_secret, tenant=tenant.id, roles=["reader"], ttl_seconds=10, now=1_000_000
    )
    resp = await api.client.get(tenant.path(R), headers={"Authorization": f"Bearer {old}"})
    assert resp.status == 401
    assert "expired" in (await resp.json(content_type=None))["detail"]


async def test_other_tenant_is_403(api: Api, tenant: TenantApi) -> None:
    other = await api.create_tenant()
    resp = await api.request("GET", tenant.path(R), tenant=other["id"], roles=("admin",))
    assert resp.status == 403


@pytest.mark.parametrize(
    ("roles", "method", "status"),
    [
        (("reader",), "GET", 200),
        (("reader",), "PUT", 403),
        (("writer",), "PUT", 202),
        (("admin",), "PUT", 202),
        ((), "GET", 403),
    ],
)
async def test_role_matrix(
    tenant: TenantApi, roles: tuple[str, ...], method: str, status: int
) -> None:
    rest = R if method == "GET" else f"{R}/x"
    kwargs = {"json": {"a": 1}} if method == "PUT" else {}
    resp = await tenant.call(method, rest, roles=roles, **kwargs)
    assert resp.status == status


async def test_unknown_tenant_is_404_for_platform_admin_and_403_for_others(api: Api) -> None:
    resp = await api.request("GET", "/v1/tenants/nosuchtenant1")
    assert resp.status == 404
    resp = await api.request(
        "GET", "/v1/tenants/nosuchtenant1", tenant="nosuchtenant1", roles=("admin",)
    )
    assert resp.status == 403


async def test_platform_admin_reads_any_tenant(api: Api, tenant: TenantApi) -> None:
    resp = await api.request("GET", tenant.path(R))
    assert resp.status == 200


async def test_invalid_tenant_id_is_422_for_platform_admin(api: Api) -> None:
    resp = await api.request("GET", "/v1/tenants/Bad;Drop")
    assert resp.status == 422


async def test_platform_admin_bound_to_a_tenant_is_no_platform_admin(
    api: Api, tenant: TenantApi
) -> None:
    # `eventfold token` refuses to sign this, but any holder of the key could.
    claims = {
        "sub": "mallory",
        "tenant": tenant.id,
        "roles": ["platform-admin"],
        "exp": int(time.time()) + 600,
    }
    headers = {"Authorization": f"Bearer {jwt.encode(claims, api.settings.jwt_secret)}"}
    resp = await api.client.post(
        "/v1/tenants", json={"id": new_tenant_id(), "name": "forged"}, headers=headers
    )
    assert resp.status == 403, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert "platform-admin" in (await resp.json(content_type=None))["detail"]
    # Nor does the role stand in for the tenant's own roles.
    for method, rest in (("GET", R), ("PUT", f"{R}/x"), ("GET", "/api-keys")):
        resp = await api.client.request(method, tenant.path(rest), json={}, headers=headers)
        assert resp.status == 403, (method, rest, await resp.text())
