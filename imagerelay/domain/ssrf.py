"""Outbound URL rules (webhooks, and any URL the gateway is asked to contact).

Only http(s), no credentials in the URL, and every address the host resolves to
must be public: loopback, private, link-local (cloud metadata), multicast and
reserved ranges are refused unless the operator allows private targets.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeUrl(ValueError):
    pass


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


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """Syntax plus resolution: raises :class:`UnsafeUrl` for a target we must not call."""
    host, port = check_url_syntax(url)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UnsafeUrl("host does not resolve") from None
    for info in infos:
        if not is_public_address(str(info[4][0])):
            raise UnsafeUrl("resolves to a private, loopback or reserved address")
