"""The client's address: the TCP peer, or what trusted proxies say it is.

A forwarding header is only as trustworthy as whoever wrote it, so `AddressResolver` believes
``X-Forwarded-For`` or RFC 7239 ``Forwarded`` (one of them, never both) only when the peer is a
configured trusted proxy, and then only the entries that trusted proxies appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bastion.exceptions import ConfigurationError
from bastion.typing import Scope

__all__ = ["AddressResolver", "parse_networks"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressResolver:
    """Finds the client's address, believing forwarding headers only from trusted proxies.

    With no trusted proxies the peer address is the client. When the peer is a trusted proxy,
    the forwarding header (``X-Forwarded-For`` or RFC 7239 ``Forwarded``, only the configured
    one) is walked from right to left, skipping trusted hops: the first untrusted address is the
    client, since every entry to its right was written by a proxy we trust and every entry to
    its left may have been made up by the client. IPv6 clients are grouped by their
    ``ipv6_prefix_length`` network, as one host usually owns a whole /64.
    """

    __slots__ = ("_forwarded", "_header", "_prefix", "_trusted")

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        proxy_header: str = "x-forwarded-for",
        ipv6_prefix_length: int = 64,
    ) -> None:
        self._trusted = tuple(parse_networks(trusted_proxies))
        proxy_header = proxy_header.lower()
        if proxy_header not in {"x-forwarded-for", "forwarded"}:
            raise ConfigurationError("proxy_header must be 'x-forwarded-for' or 'forwarded'")
        self._header = proxy_header.encode()
        self._forwarded = proxy_header == "forwarded"
        if not 0 <= ipv6_prefix_length <= 128:
            raise ConfigurationError("ipv6_prefix_length must be between 0 and 128")
        self._prefix = ipv6_prefix_length

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        if not client:
            return None
        host = client[0]
        if not self._trusted:
            return self._group(host) if ":" in host else host
        peer = _parse_ip(host)
        if peer is None or not self._is_trusted(peer):
            return self._group(host) if ":" in host else host
        hops = self._hops(scope)
        chosen: IPAddress = peer
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if address is None:
                break  # "unknown" or obfuscated: the nearest trusted proxy is all we know
            chosen = address
            if not self._is_trusted(address):
                break
        return self._format(chosen)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def _hops(self, scope: Scope) -> list[str]:
        values = [bytes(v) for k, v in scope["headers"] if k == self._header]
        if not values:
            return []
        text = b",".join(values).decode("latin-1")
        if self._forwarded:
            return _forwarded_for(text)
        return [part.strip() for part in text.split(",")]

    def _group(self, host: str) -> str:
        address = _parse_ip(host)
        return host if address is None else self._format(address)

    def _format(self, address: IPAddress) -> str:
        if address.version == 6 and self._prefix < 128:
            network = ipaddress.IPv6Network((address, self._prefix), strict=False)
            return str(network)
        return str(address)


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """Trusted proxy networks (``10.0.0.0/8``, ``127.0.0.1``, ``::1``), validated at start-up."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigurationError(f"{value!r} is not an IP address or network") from None
    return networks


def _parse_ip(value: str) -> IPAddress | None:
    """An address from a peer or forwarding entry: bare, ``[v6]:port``, ``v4:port``, quoted."""
    value = value.strip().strip('"')
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _forwarded_for(text: str) -> list[str]:
    """The ``for=`` node of every RFC 7239 element; an element without one is an unknown hop."""
    hops: list[str] = []
    for element in _split_outside_quotes(text, ","):
        node = "unknown"
        for pair in _split_outside_quotes(element, ";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                node = value.strip()
                break
        hops.append(node)
    return hops
