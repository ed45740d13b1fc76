"""Outbound HTTP to tenant-chosen URLs (webhooks, integrations) without SSRF.

A tenant names the URL, so a careless check would let it reach the cloud
metadata service, the database or anything on the private network. Rules:

- only ``http``/``https``, a host, no credentials in the URL;
- every address a host resolves to is checked *at connect time*, in the
  resolver the HTTP client connects through (a DNS answer that changes after
  subscription — rebinding — is caught too); private, loopback, link-local
  (so the metadata address), multicast, reserved and unspecified addresses are
  refused unless ``EVENTFOLD_WEBHOOK_ALLOW_HOSTS`` names the host or a CIDR
  holding the address;
- redirects are never followed (a 3xx is an answer, not a new target);
- response bodies are read up to a cap;
- what a tenant reads of a failed call (a delivery's error, an integration's
  ``last_error``) is :func:`failure_text`: the kind of failure, never an address
  (a DNS answer from inside the network is internal information).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from eventfold.errors import PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Addresses that are not private by Python's tables but must never be reached.
_ALWAYS_FORBIDDEN = (
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (shared address space)
)


class EgressRefused(OSError, PermanentError):
    """A URL or an address that outbound requests may not reach.

    An ``OSError`` so aiohttp carries it out of its resolver (as the
    ``os_error`` of a ``ClientConnectorError``); see :func:`refusal_of`.
    """

    @property
    def public(self) -> str:
        """The reason as a tenant may read it."""
        return str(self)


class PrivateAddress(EgressRefused):
    """The target is, or resolves to, an address outbound requests may not reach.

    Tenants read only "private address" (:attr:`public`): the address a host name
    resolved to is the network's, not theirs.
    """

    @property
    def public(self) -> str:
        """Always "private address", whatever the message says."""
        return "private address"


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and networks reachable although private (``EVENTFOLD_WEBHOOK_ALLOW_HOSTS``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Split entries into CIDRs/addresses and host names (case-insensitive)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """Whether ``host`` is named in the list."""
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether ``address`` may be reached: public, or inside an allowed network."""
        if any(address in net for net in self.networks if net.version == address.version):
            return True
        return not forbidden_address(address)


def forbidden_address(address: IPAddress) -> bool:
    """True for addresses outbound requests must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return forbidden_address(address.ipv4_mapped)
    if any(address in net for net in _ALWAYS_FORBIDDEN if net.version == address.version):
        return True
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str, allow: AllowList) -> URL:
    """Validate a target URL's form, and its address when it names one.

    Raises :class:`EgressRefused` with a message fit for a 422. A host *name*
    passes here; its addresses are checked on every connection.
    """
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise EgressRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise EgressRefused("only http and https URLs are allowed")
    if not parsed.host:
        raise EgressRefused("the URL has no host")
    if parsed.user or parsed.password:
        raise EgressRefused("credentials in the URL are not allowed; use headers")
    if len(url) > 2048:
        raise EgressRefused("the URL is longer than 2048 characters")
    address = _literal(parsed.host)
    if address is not None and not allow.allows_host(parsed.host):
        if not allow.allows_address(address):
            raise PrivateAddress(f"{address} is a private, loopback or link-local address")
    elif parsed.host.lower().rstrip(".") == "localhost" and not allow.allows_host(parsed.host):
        raise PrivateAddress("localhost is not reachable")
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses forbidden addresses."""

    def __init__(self, allow: AllowList, inner: AbstractResolver | None = None) -> None:
        self._allow = allow
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; every answer must be allowed, else :class:`EgressRefused`."""
        results = await self._inner.resolve(host, port, family)
        if self._allow.allows_host(host):
            return results
        for result in results:
            address = ipaddress.ip_address(result["host"])
            if not self._allow.allows_address(address):
                # One bad answer refuses all: a name that resolves to a mix is an attack.
                # The address stays out of the message: it ends up where tenants read.
                raise PrivateAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


def refusal_of(exc: BaseException) -> EgressRefused | None:
    """The :class:`EgressRefused` behind a client error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EgressRefused):
            return seen
        inner = getattr(seen, "os_error", None)
        if isinstance(inner, EgressRefused):
            return inner
        seen = seen.__cause__ or seen.__context__
    return None


def failure_text(exc: BaseException) -> str:
    """What a tenant may read of a failed outbound call: its kind, never an address.

    aiohttp's own messages name the address it connected to ("Connect call failed
    ('10.0.0.5', 443)"), and a refusal's may too: neither is passed on.
    """
    refusal = refusal_of(exc)
    if refusal is not None:
        return f"refused: {refusal.public}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "connection failed: the host name does not resolve"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "connection failed: TLS handshake or certificate refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = errno.errorcode.get(exc.os_error.errno or 0, "")
        return f"connection failed{f': {code}' if code else ''}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off or malformed"
    return f"request failed: {type(exc).__name__}"


def guarded_session(
    allow: AllowList, *, limit: int = 100, limit_per_host: int = 10, **kwargs: Any
) -> aiohttp.ClientSession:
    """An HTTP client whose every connection goes through :class:`GuardedResolver`.

    Callers still pass each URL through :func:`check_url` first: aiohttp skips
    the resolver for addresses written in the URL.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow),
        limit=limit,
        limit_per_host=limit_per_host,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, **kwargs)


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read at most ``limit`` bytes of the body; :class:`ResponseTooLarge` beyond."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the response body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ResponseTooLarge(PermanentError):
    """A third party answered more than the cap allows."""
