"""Refusing outbound webhook requests to private, loopback and other non-public addresses.

The guard resolves the host once and the dispatcher connects to the very address it checked
(the URL's host is replaced by that IP; `Host` and TLS SNI/certificate checks keep the name),
so a DNS answer that changes between the check and the connect (rebinding) cannot slip a
private address in. `webhook_allow_private` turns the refusal off (tests, single-host setups).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class AddressRefused(Exception):
    """The host resolves to an address webhooks may not reach."""

    def __init__(self, address: str) -> None:
        super().__init__(f"refused: {address} is a private address")
        self.address = address


class ResolutionFailed(Exception):
    """The host did not resolve."""


# IPv6 ranges that carry or reach an IPv4 address, or are special-purpose (IANA IPv6
# Special-Purpose Address Registry), refused whole: a translator or tunnel on the path could
# turn any of them into a private IPv4 (2002:a9fe:a9fe:: is 169.254.169.254 over 6to4).
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated, RFC 4291)
        "::ffff:0:0/96",  # IPv4-mapped (RFC 4291)
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "2001::/32",  # Teredo (RFC 4380)
        "2001:db8::/32",  # documentation (RFC 3849)
        "2002::/16",  # 6to4 (RFC 3056)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, RFC 3879): routed inside sites
        "ff00::/8",  # multicast
    )
)


def is_blocked(address: IPAddress) -> bool:
    """Private, loopback, link-local, multicast, reserved, unspecified or otherwise not global;
    for IPv6 also every range that embeds or translates to IPv4, and site-local."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(address.compressed.split("%")[0])
        if any(address in network for network in _REFUSED_V6):
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


def literal_ip(host: str) -> IPAddress | None:
    """The IP when `host` is an address literal (brackets and IPv6 zone allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolutionFailed(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ResolutionFailed(f"cannot resolve {host}: no addresses")
    return addresses


async def pick_address(
    host: str, port: int, *, allow_private: bool, resolver: Resolver = resolve
) -> str:
    """The address to connect to; AddressRefused if any address of `host` is blocked."""
    literal = literal_ip(host)
    addresses = [str(literal)] if literal is not None else await resolver(host, port)
    if not allow_private:
        for address in addresses:
            ip = literal_ip(address)
            if ip is None or is_blocked(ip):
                raise AddressRefused(address)
    return addresses[0]
