"""Failed authentication, limited per client address.

Every answer 401 (a missing, malformed, unknown, revoked or expired credential,
a bad webhook signature) and every inbound webhook to an integration that does
not exist takes a token from its client address's bucket: ``burst`` tokens,
refilled at ``per_second``. Once the bucket is empty, every request from that
address (but health, metrics and the OpenAPI document) is answered 429 with
``Retry-After`` before its credentials are looked at: no key lookup, no
signature check, no consistency wait. Clients whose credentials work never
take a token.

The buckets live in this process's memory, not in Redis: a refusal costs no
round trip and cannot fail open, and an attacker spread over N processes gets
N budgets, which is still a bound. The table of addresses is bounded too (the
least recently failing address goes first).

The client address is the peer's, unless the peer is a trusted proxy
(``EVENTFOLD_TRUSTED_PROXIES``): then it is the right-most address in
``X-Forwarded-For`` that is not a trusted proxy. IPv6 clients are grouped by
their /64 network, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

#: Addresses with a bucket not yet full again; past it the least recently failing goes.
MAX_ADDRESSES = 65_536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``specs`` (addresses or CIDRs); a bad one raises ValueError."""
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """The address to hold responsible for a request (see the module's docstring)."""
    chain = [peer or ""]
    if trusted and forwarded_for:
        # Appended by each proxy in turn: the right-most entries are the nearest.
        chain += [part.strip() for part in forwarded_for.split(",")][::-1]
    client = chain[0]
    for hop in chain:
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            break  # not an address: nothing further left can be trusted either
        client = hop
        if not any(address in net for net in trusted):
            break
    return _group(client)


def _group(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class AuthFailures:
    """Token buckets of failed authentications, one per client address."""

    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self._max = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when configured off (a burst of 0)."""
        return self.burst > 0

    @property
    def tracking(self) -> bool:
        """Whether some address has failed lately (else nobody can be refused)."""
        return bool(self._buckets)

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.at) * self.per_second)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again; None when it may now."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        now = self._clock()
        tokens = self._tokens(bucket, now)
        if tokens >= self.burst:
            del self._buckets[address]  # full again: nothing to remember
            return None
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) / self.per_second))

    def failed(self, address: str) -> None:
        """Take a token of ``address``'s bucket for one failed authentication."""
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(float(self.burst), now)
        bucket.tokens = max(0.0, self._tokens(bucket, now) - 1)
        bucket.at = now
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


@dataclass(frozen=True, slots=True)
class AuthLimit:
    """The process's failure buckets and the proxies whose ``X-Forwarded-For`` it trusts."""

    failures: AuthFailures
    trusted: tuple[Network, ...] = ()

    def address(self, request: web.Request) -> str:
        """The client address of ``request`` (computed once per request)."""
        known = request.get(_ADDRESS)
        if known is None:
            known = request[_ADDRESS] = client_address(
                request.remote, request.headers.get("X-Forwarded-For"), self.trusted
            )
        return known


_ADDRESS = web.RequestKey("client_address", str)
