from __future__ import annotations

import asyncio

import pytest

from imagerelay.domain.ssrf import UnsafeUrl, check_url_syntax, is_public_address, pick_address, resolve_target


@pytest.mark.parametrize(
    "url",
    ["ftp://x.com/", "http://u:p@x.com/", "http:///nohost", "x" * 3000, "javascript:alert(1)", "http://x.com:99999/"],
)
def test_syntax_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url_syntax(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("233.1.1.1", False),
        ("ff02::1", False),
        # carrier-grade NAT, and cloud metadata outside 169.254/16 (Alibaba 100.100.100.200, Oracle/Alibaba 192.0.0.192)
        ("100.64.0.1", False),
        ("100.100.100.200", False),
        ("192.0.0.192", False),
        ("192.0.0.9", False),
        # IPv4 inside IPv6: mapped, compatible (deprecated), 6to4 (2002::/16 and its relay), NAT64, Teredo
        ("::ffff:10.0.0.1", False),
        ("::ffff:100.100.100.200", False),
        ("::127.0.0.1", False),
        ("2002:7f00:1::", False),
        ("2002:0808:0808::", False),
        ("192.88.99.1", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::808:808", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        # unique-local (AWS IPv6 metadata fd00:ec2::254), benchmarking, reserved, documentation, broadcast
        ("fd00:ec2::254", False),
        ("fc00::1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("255.255.255.255", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_every_resolved_address_must_pass() -> None:
    assert pick_address(["8.8.8.8", "1.1.1.1"], allow_private=False) == "8.8.8.8"
    with pytest.raises(UnsafeUrl):
        pick_address(["8.8.8.8", "10.0.0.1"], allow_private=False)  # the resolver's order is not ours
    with pytest.raises(UnsafeUrl):
        pick_address([], allow_private=True)
    assert pick_address(["10.0.0.1"], allow_private=True) == "10.0.0.1"


def test_resolution_checked_and_pinned() -> None:
    with pytest.raises(UnsafeUrl):
        asyncio.run(resolve_target("http://localhost:8080/hook", allow_private=False))
    target = asyncio.run(resolve_target("https://localhost:8080/hook?x=1", allow_private=True))
    assert target.address in ("127.0.0.1", "::1")
    assert (target.scheme, target.host, target.port) == ("https", "localhost", 8080)
    with pytest.raises(UnsafeUrl):
        asyncio.run(resolve_target("http://no-such-host.invalid/", allow_private=True))
