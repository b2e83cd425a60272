"""Client addresses behind trusted proxies: X-Forwarded-For, Forwarded, spoofing, IPv6."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import ConfigurationError, Tier
from bastion.ratelimit import AddressResolver, keys
from bastion.ratelimit.keys import RequestView
from tests.ratelimit.conftest import client, limited

pytestmark = pytest.mark.anyio


def scope(
    peer: str | None = "203.0.113.9", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 1234),
        "headers": headers or [],
    }


def test_without_trusted_proxies_forwarding_headers_are_ignored() -> None:
    """With no trusted proxy configured, X-Forwarded-For and Forwarded change nothing."""
    resolve = AddressResolver()
    spoofed = [(b"x-forwarded-for", b"1.1.1.1"), (b"forwarded", b"for=2.2.2.2")]
    assert resolve(scope("203.0.113.9", spoofed)) == "203.0.113.9"


def test_untrusted_peer_cannot_spoof_x_forwarded_for() -> None:
    """A peer outside the trusted networks is the client, whatever header it sends."""
    resolve = AddressResolver(["10.0.0.0/8"])
    assert resolve(scope("203.0.113.9", [(b"x-forwarded-for", b"1.1.1.1")])) == "203.0.113.9"


def test_trusted_proxy_hop_is_skipped_right_to_left() -> None:
    """Behind trusted proxies the rightmost untrusted entry is the client; entries left of it
    (which the client may have forged) are ignored."""
    resolve = AddressResolver(["10.0.0.0/8", "192.0.2.1"])
    headers = [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7, 192.0.2.1, 10.0.0.5")]
    assert resolve(scope("10.0.0.2", headers)) == "198.51.100.7"


def test_repeated_forwarding_header_lines_are_one_list() -> None:
    """Several X-Forwarded-For lines are read in order as one comma-separated list."""
    resolve = AddressResolver(["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7, 10.0.0.3")]
    assert resolve(scope("10.0.0.2", headers)) == "198.51.100.7"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    """When every hop is trusted, the origin is the leftmost entry."""
    resolve = AddressResolver(["10.0.0.0/8"])
    assert resolve(scope("10.0.0.2", [(b"x-forwarded-for", b"10.9.9.9, 10.0.0.3")])) == "10.9.9.9"


def test_trusted_proxy_without_header_is_the_client() -> None:
    """A trusted peer that forwards no header is itself the client."""
    assert AddressResolver(["10.0.0.0/8"])(scope("10.0.0.2")) == "10.0.0.2"


def test_unknown_hop_stops_at_the_nearest_trusted_proxy() -> None:
    """An unparseable entry (``unknown``, garbage) ends the walk at the last trusted address."""
    resolve = AddressResolver(["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", b"1.2.3.4, unknown, 10.0.0.3")]
    assert resolve(scope("10.0.0.2", headers)) == "10.0.0.3"


def test_rfc7239_forwarded_is_read_when_configured() -> None:
    """With proxy_header='forwarded', for= nodes are walked, quoted IPv6 with port included."""
    resolve = AddressResolver(["10.0.0.0/8"], proxy_header="forwarded", ipv6_prefix_length=128)
    headers = [
        (
            b"forwarded",
            b'for=6.6.6.6;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.1, for=10.0.0.3',
        )
    ]
    assert resolve(scope("10.0.0.2", headers)) == "2001:db8:cafe::17"


def test_forwarded_and_x_forwarded_for_are_never_mixed() -> None:
    """Only the configured header counts: a forged one of the other kind is ignored."""
    xff = AddressResolver(["10.0.0.0/8"])
    fwd = AddressResolver(["10.0.0.0/8"], proxy_header="Forwarded")
    headers = [(b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")]
    assert xff(scope("10.0.0.2", headers)) == "198.51.100.7"
    assert fwd(scope("10.0.0.2", headers)) == "6.6.6.6"


def test_forwarded_element_without_for_is_an_unknown_hop() -> None:
    """A Forwarded element with no for= parameter cannot be walked past."""
    resolve = AddressResolver(["10.0.0.0/8"], proxy_header="forwarded")
    headers = [(b"forwarded", b'for=6.6.6.6, proto=https;by="x,y", for=10.0.0.4')]
    assert resolve(scope("10.0.0.2", headers)) == "10.0.0.4"


def test_ipv6_clients_are_grouped_by_prefix() -> None:
    """Two addresses of one IPv6 /64 share a key; IPv4-mapped addresses count as IPv4."""
    resolve = AddressResolver()
    assert resolve(scope("2001:db8::1")) == resolve(scope("2001:db8::ffff")) == "2001:db8::/64"
    assert AddressResolver(ipv6_prefix_length=128)(scope("2001:db8::1")) == "2001:db8::1"
    assert resolve(scope("::ffff:198.51.100.7")) == "198.51.100.7"


def test_ports_and_brackets_in_forwarded_entries() -> None:
    """Entries may carry ports (``v4:port``, ``[v6]:port``) and still parse."""
    resolve = AddressResolver(["10.0.0.0/8"], ipv6_prefix_length=128)
    assert resolve(scope("10.0.0.2", [(b"x-forwarded-for", b"198.51.100.7:5555")])) == (
        "198.51.100.7"
    )
    assert resolve(scope("10.0.0.2", [(b"x-forwarded-for", b"[2001:db8::9]:443")])) == (
        "2001:db8::9"
    )


def test_non_ip_peer_is_kept_as_is() -> None:
    """A peer that is not an IP address (a test client's name) is its own key."""
    assert AddressResolver(["10.0.0.0/8"])(scope("testclient")) == "testclient"
    assert AddressResolver()(scope(None)) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trusted_proxies": ["not-an-ip"]}, "not an IP"),
        ({"proxy_header": "x-real-ip"}, "proxy_header"),
        ({"ipv6_prefix_length": 129}, "ipv6_prefix_length"),
    ],
)
def test_resolver_settings_are_validated(options: dict[str, Any], message: str) -> None:
    """Bad proxy settings fail at start-up with a clear message."""
    trusted = options.pop("trusted_proxies", ())
    with pytest.raises(ConfigurationError, match=message):
        AddressResolver(trusted, **options)


async def test_spoofed_header_does_not_change_the_bucket() -> None:
    """Through the middleware, an untrusted peer rotating X-Forwarded-For stays one bucket."""
    app = limited(Tier(name="ip", limit=2, window=60), trusted_proxies=("10.0.0.0/8",))
    async with client(app, peer="203.0.113.9") as http:
        statuses = [
            (await http.get("/", headers={"x-forwarded-for": f"1.2.3.{i}"})).status_code
            for i in range(4)
        ]
    assert statuses == [200, 200, 429, 429]


async def test_trusted_proxy_separates_its_clients() -> None:
    """Behind a trusted proxy each forwarded client gets its own bucket."""
    app = limited(Tier(name="ip", limit=1, window=60), trusted_proxies=("10.0.0.0/8",))
    async with client(app, peer="10.0.0.2") as http:
        first = await http.get("/", headers={"x-forwarded-for": "198.51.100.1"})
        second = await http.get("/", headers={"x-forwarded-for": "198.51.100.2"})
        again = await http.get("/", headers={"x-forwarded-for": "198.51.100.1"})
    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 429]


def test_no_peer_address_is_one_unknown_client() -> None:
    """A server that reports no peer (unix socket) puts requests under one ``unknown`` key."""
    request = RequestView(scope(None), AddressResolver())
    assert keys.client_address()(request) == "addr:unknown"


def test_forwarded_quoted_values_may_hold_separators_and_escapes() -> None:
    """Quoted Forwarded values may contain commas, semicolons and escapes without splitting."""
    resolve = AddressResolver(["10.0.0.0/8"], proxy_header="forwarded")
    headers = [(b"forwarded", b'for="6.6.6.6";ext="a\\"b,c;d", for="[2001:db8::1"')]
    # the last hop is malformed (unterminated bracket): the nearest trusted proxy is the client
    assert resolve(scope("10.0.0.2", headers)) == "10.0.0.2"
    headers = [(b"forwarded", b'for="6.6.6.6";ext="a\\"b,c;d", for=10.0.0.7')]
    assert resolve(scope("10.0.0.2", headers)) == "6.6.6.6"
