from __future__ import annotations

import pytest

from imagerelay.domain.ssrf import UnsafeUrl, check_url, check_url_syntax, is_public_address


@pytest.mark.parametrize("url", ["ftp://x.com/", "http://u:p@x.com/", "http:///nohost", "x" * 3000, "javascript:alert(1)",
                                 "http://x.com:99999/"])
def test_syntax_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url_syntax(url)


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("1.1.1.1", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("::1", False), ("fe80::1", False), ("0.0.0.0", False),
    ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("2606:4700:4700::1111", True),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_resolution_checked() -> None:
    with pytest.raises(UnsafeUrl):
        check_url("http://localhost:8080/hook", allow_private=False)
    check_url("http://localhost:8080/hook", allow_private=True)
