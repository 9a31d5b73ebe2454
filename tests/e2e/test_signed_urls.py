"""Signed image URLs under hostile query strings (issue 10): every bad link is the same
404 in the official error shape, never a 500."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

from tests.support.gateway import Gateway


@pytest.fixture(scope="module")
def signed(gateway: Gateway) -> tuple[str, str, str]:
    """(path, expires, sig) of a real image URL."""
    r = httpx.post(
        gateway.v1 + "/images/generations",
        timeout=60,
        headers={"Authorization": f"Bearer {gateway.tokens['default']}"},
        json={"model": "gpt-image-2", "prompt": "a kite", "response_format": "url"},
    )
    assert r.status_code == 200, r.text
    url = urllib.parse.urlsplit(r.json()["data"][0]["url"])
    query = dict(urllib.parse.parse_qsl(url.query))
    assert httpx.get(r.json()["data"][0]["url"]).status_code == 200
    return url.path, query["expires"], query["sig"]


def get(gateway: Gateway, path: str, expires: str, sig: str) -> httpx.Response:
    return httpx.get(gateway.base_url + path, params={"expires": expires, "sig": sig})


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("sig", ["\u00e9" * 64, "\u00e9", "\u0660" * 64, "\u2603", "A" * 64, "", "0" * 5000])
def test_a_hostile_sig_is_404(gateway: Gateway, signed: tuple[str, str, str], sig: str) -> None:
    path, expires, _ = signed
    assert_not_found(get(gateway, path, expires, sig))


@pytest.mark.parametrize(
    "expires",
    ["\u00b2", "\u0661\u0667\u0660\u0660", "\uff11", "9" * 5000, "-1", "1e10", " 1", "", "99999999999999999999"],
)
def test_a_hostile_expires_is_404(gateway: Gateway, signed: tuple[str, str, str], expires: str) -> None:
    path, _, sig = signed
    assert_not_found(get(gateway, path, expires, sig))


def test_the_same_digits_in_another_script_do_not_pass(gateway: Gateway, signed: tuple[str, str, str]) -> None:
    path, expires, sig = signed
    arabic = expires.translate(
        str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")
    )
    assert_not_found(get(gateway, path, arabic, sig))
    assert_not_found(get(gateway, path, expires, sig.upper()))
    assert get(gateway, path, expires, sig).status_code == 200


@pytest.mark.parametrize(
    "name", ["%2e%2e%2fimagerelay.db", ".hidden.png", "x%00.png", "\u00e9.png", "a" * 300 + ".png", "url-signing.key"]
)
def test_a_hostile_name_is_404(gateway: Gateway, signed: tuple[str, str, str], name: str) -> None:
    _, expires, sig = signed
    assert_not_found(get(gateway, "/v1/files/images/" + name, expires, sig))
