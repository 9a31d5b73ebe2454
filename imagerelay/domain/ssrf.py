"""Outbound URL rules (webhooks, and any URL the gateway is asked to contact).

Only http(s), no credentials in the URL, and every address the host resolves to
must be globally routable (``ipaddress``'s ``is_global``, after unwrapping IPv4
addresses embedded in IPv6 forms), unless the operator allows private targets.

A name is resolved once and the caller connects to the address that was checked
(:func:`resolve_target`): checking a name and letting the HTTP client resolve it
again is open to DNS rebinding (the second answer can be 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges ``is_global`` lets through on some Python versions, or that embed another
# address we cannot vouch for. 3.11 calls all of 192.0.0.0/24 global (cloud metadata
# such as Alibaba's 192.0.0.192 lives there); 6to4 (2002::/16 and its relay anycast
# 192.88.99.0/24) and IPv4-compatible ::/96 are deprecated forms that reach an
# arbitrary IPv4 address through a relay; 64:ff9b:1::/48 is local-use NAT64.
_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",
        "192.88.99.0/24",
        "2002::/16",
        "::/96",
        "64:ff9b:1::/48",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64: the last 32 bits are an IPv4 address


# Names in caller-supplied URLs resolve on threads of their own: a name whose DNS server
# never answers holds a thread for the resolver's whole timeout, and on the event loop's
# default executor (a handful of threads on a small machine) a few of them would stall
# every other lookup, upstream connections included. Excess lookups queue here.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="url-resolver")


class UnsafeUrl(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    """A URL whose host resolved to ``address``, the one address the caller may connect to."""

    url: str
    scheme: str
    host: str  # as written in the URL: the Host header and the TLS name
    port: int
    address: str


def check_url_syntax(url: str) -> tuple[str, int]:
    """Validate the form of ``url``; returns (host, port). Pure."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("must be an http(s) URL of at most 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("must use http or https")
    if parts.username or parts.password:
        raise UnsafeUrl("must not carry credentials")
    if not parts.hostname:
        raise UnsafeUrl("has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("has an invalid port") from None
    return parts.hostname, port


def _embedded(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form carries (mapped ::ffff:a.b.c.d, NAT64), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast address. Pure."""
    ip = _embedded(ipaddress.ip_address(address.split("%", 1)[0]))
    if ip.is_multicast or any(ip in net for net in _REFUSED if net.version == ip.version):
        return False
    return ip.is_global


def pick_address(addresses: Iterable[str], *, allow_private: bool) -> str:
    """The address to connect to: the first one, once every one passed. Pure.

    All must pass (not just the first): a name that also resolves to 10.0.0.1 is
    someone probing the network, and the resolver's order is theirs to choose.
    """
    listed = list(dict.fromkeys(addresses))
    if not listed:
        raise UnsafeUrl("host does not resolve")
    if not allow_private and not all(is_public_address(a) for a in listed):
        raise UnsafeUrl("resolves to a private, loopback or reserved address")
    return listed[0]


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[str]:
    return [str(info[4][0]) for info in infos]  # type: ignore[index]


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Syntax plus resolution off the event loop: the :class:`Target` to connect to."""
    host, port = check_url_syntax(url)
    try:
        infos = await asyncio.get_running_loop().run_in_executor(
            _RESOLVER, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )
    except (socket.gaierror, UnicodeError):
        raise UnsafeUrl("host does not resolve") from None
    address = pick_address(_addresses(infos), allow_private=allow_private)
    return Target(url=url, scheme=urlsplit(url).scheme, host=host, port=port, address=address)
