"""Failed authentication per client address (eventfold.authlimit)."""

from __future__ import annotations

import pytest

from eventfold.authlimit import AuthFailures, client_address, trusted_networks

PROXIES = trusted_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.9", None, (), "203.0.113.9"),
        # An untrusted peer's X-Forwarded-For is anybody's say: ignored.
        ("203.0.113.9", "198.51.100.1", PROXIES, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", (), "203.0.113.9"),
        # Behind trusted proxies: the right-most address that is not one of them.
        ("127.0.0.1", "198.51.100.1", PROXIES, "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", PROXIES, "198.51.100.1"),
        ("127.0.0.1", "garbage, 198.51.100.1", PROXIES, "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1, garbage", PROXIES, "127.0.0.1"),
        ("127.0.0.1", "10.0.0.5", PROXIES, "10.0.0.5"),
        # IPv6 hosts are grouped by /64; IPv4-mapped addresses are IPv4.
        ("2001:db8:1:2:aaaa::1", None, (), "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", None, (), "203.0.113.9"),
        (None, None, (), ""),
    ],
)
def test_client_address(
    peer: str | None, forwarded: str | None, trusted: tuple[object, ...], client: str
) -> None:
    assert client_address(peer, forwarded, trusted) == client  # type: ignore[arg-type]


def test_bad_trusted_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        trusted_networks(["10.0.0.0/33"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_until_a_token_is_back() -> None:
    clock = Clock()
    failures = AuthFailures(3, 0.5, clock=clock)
    assert not failures.tracking  # nobody failed: requests skip the address check
    for _ in range(3):
        assert failures.retry_after("a") is None
        failures.failed("a")
    assert failures.retry_after("a") == 2  # one token back in 1 / 0.5 s
    assert failures.retry_after("b") is None
    clock.now += 2
    assert failures.retry_after("a") is None
    failures.failed("a")
    assert failures.retry_after("a") == 2


def test_full_buckets_are_forgotten_and_the_table_is_bounded() -> None:
    clock = Clock()
    failures = AuthFailures(2, 1.0, max_addresses=3, clock=clock)
    for address in ("a", "b", "c", "d"):
        failures.failed(address)
        failures.failed(address)
    assert failures.retry_after("a") is None  # the oldest went first
    assert failures.retry_after("d") == 1
    clock.now += 10
    assert failures.retry_after("d") is None
    assert failures.tracking  # b and c are forgotten once asked about, full again
    assert failures.retry_after("b") is None
    assert failures.retry_after("c") is None
    assert not failures.tracking


def test_a_burst_of_zero_turns_it_off() -> None:
    failures = AuthFailures(0, 1.0)
    assert not failures.enabled
    for _ in range(10):
        failures.failed("a")
    assert failures.retry_after("a") is None
