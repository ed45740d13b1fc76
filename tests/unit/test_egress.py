"""SSRF rules for tenant-chosen URLs: forms, literal addresses, resolved addresses."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from eventfold.egress import (
    AllowList,
    EgressRefused,
    GuardedResolver,
    check_url,
    failure_text,
    refusal_of,
)

NOBODY = AllowList()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x", "file:///etc/passwd", "gopher://example.com", "example.com/x",
        "http://127.0.0.1/", "http://10.0.0.5/", "http://192.168.1.1/", "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[fe80::1]/",
        "http://0.0.0.0/", "http://224.0.0.1/", "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/",
        "http://[fd00:ec2::254]/", "http://localhost:8080/", "http://user:pw@example.com/",
    ],
)  # fmt: skip
def test_forbidden_urls_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused):
        check_url(url, NOBODY)


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://93.184.216.34:8080/x"])
def test_public_urls_pass(url: str) -> None:
    assert check_url(url, NOBODY).host


def test_the_allow_list_opens_named_hosts_and_networks() -> None:
    allow = AllowList.parse(["127.0.0.0/8", "LocalHost", "internal.svc"])
    assert check_url("http://127.0.0.1:9000/", allow)
    assert check_url("http://localhost/", allow)
    with pytest.raises(EgressRefused):
        check_url("http://10.1.2.3/", allow)


class _Fixed(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_a_name_resolving_to_a_private_address_is_refused_at_connect() -> None:
    resolver = GuardedResolver(NOBODY, _Fixed("93.184.216.34", "10.0.0.1"))
    with pytest.raises(EgressRefused) as refused:
        await resolver.resolve("rebind.example", 80)
    # The DNS answer is the network's, not the tenant's: it is in no message.
    assert "10.0.0.1" not in str(refused.value)
    assert failure_text(refused.value) == "refused: private address"


async def test_a_public_name_resolves() -> None:
    resolver = GuardedResolver(NOBODY, _Fixed("93.184.216.34"))
    assert [r["host"] for r in await resolver.resolve("example.com", 80)] == ["93.184.216.34"]


async def test_an_allowed_host_name_may_resolve_anywhere() -> None:
    resolver = GuardedResolver(AllowList.parse(["hooks.internal"]), _Fixed("10.0.0.1"))
    assert await resolver.resolve("hooks.internal", 80)


def test_refusal_is_found_behind_a_client_error() -> None:
    refused = EgressRefused("no")
    wrapper = RuntimeError("connect failed")
    wrapper.__cause__ = refused
    assert refusal_of(wrapper) is refused
    assert refusal_of(RuntimeError("other")) is None


def test_failure_text_names_the_kind_of_failure_only() -> None:
    with pytest.raises(EgressRefused) as literal:
        check_url("http://10.0.0.5/hook", NOBODY)
    assert failure_text(literal.value) == "refused: private address"
    with pytest.raises(EgressRefused) as scheme:
        check_url("ftp://example.com/x", NOBODY)
    assert failure_text(scheme.value) == "refused: only http and https URLs are allowed"
    assert failure_text(ValueError("10.0.0.5 said no")) == "request failed: ValueError"
