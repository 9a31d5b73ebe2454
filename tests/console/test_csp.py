"""The Content-Security-Policy really holds: every console page is served with the contract's
policy and companion headers, its markup needs nothing the policy forbids (no inline
script, style attribute or event handler), and a real browser loading it reports no
violation. Error pages, redirects and static files carry the headers too."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.console.browser import ConsoleLog
from tests.console.conftest import ConsoleGateway
from tests.console.pages import page_cases, security_header_problems

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
STYLE_ATTR = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I)
HANDLER_ATTR = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)
STYLE_TAG = re.compile(r"<style[\s>]", re.I)
JS_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']\s*javascript:""", re.I)


def markup_problems(html: str) -> list[str]:
    found = []
    for name, rx in (
        ("inline <script>", INLINE_SCRIPT),
        ("style attribute", STYLE_ATTR),
        ("inline event handler", HANDLER_ATTR),
        ("<style> element", STYLE_TAG),
        ("javascript: URL", JS_URL),
    ):
        found += [f"{name}: {m.group(0)[:120]}" for m in rx.finditer(html)]
    return found


@pytest.mark.parametrize(("role", "path"), page_cases())
def test_page_has_the_csp_and_the_browser_reports_no_violation(
    open_as: Callable[[str], Any], role: str, path: str, ids: dict[str, str], browser_log: ConsoleLog
) -> None:
    page = open_as(role)
    response = page.goto(path.format(**ids))
    assert response is not None and response.status == 200, f"{path}: HTTP {response and response.status}"
    assert security_header_problems(response.headers) == [], path
    assert markup_problems(response.text()) == [], path
    page.wait_for_load_state("networkidle")
    # Everything the page loaded came from this gateway, with nosniff.
    assert browser_log.csp == [], browser_log.csp
    assert browser_log.page_errors == [], browser_log.page_errors


def test_static_files_error_pages_and_redirects_carry_the_headers(console_gw: ConsoleGateway) -> None:
    page_html = httpx.get(console_gw.url("/console/signin")).text
    assets = re.findall(r'(?:href|src)="([^"]*/console/static/[^"]+)"', page_html)
    assert assets, "the sign-in page loads nothing from /console/static/"
    for asset in assets:
        r = httpx.get(console_gw.url(asset.replace("&amp;", "&")))
        assert r.status_code == 200, asset
        assert r.headers.get("x-content-type-options") == "nosniff", asset
    missing = httpx.get(console_gw.url("/console/no-such-page"))
    assert missing.status_code == 404
    assert security_header_problems(missing.headers) == [], "the console's 404"
    # Signed out, a user page redirects to sign in; the redirect carries the policy too.
    bounce = httpx.get(console_gw.url("/console/password"))
    assert bounce.status_code in (302, 303) and "/console/signin" in bounce.headers["location"]
    assert security_header_problems(bounce.headers) == [], "the redirect to sign in"
    # A signed-in user who is not an admin gets a 403 page for the admin pages, with the policy.
    with httpx.Client(base_url=console_gw.base_url) as client:
        form = client.get("/console/signin").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf, "no CSRF token in the sign-in form"
        signed = client.post(
            "/console/signin",
            data={"csrf_token": csrf.group(1), "name": console_gw.user.name, "password": console_gw.user.password},
        )
        assert signed.status_code in (302, 303), signed.text[:300]
        forbidden = client.get("/console/admin/users")
    assert forbidden.status_code == 403
    assert security_header_problems(forbidden.headers) == [], "the admin pages' 403"


def test_markup_check_finds_what_the_policy_forbids() -> None:
    """The markup scan is not vacuous: each forbidden construct is found, allowed ones are not."""
    bad = (
        '<script>x()</script><p style="color:red">a</p><button onclick="x()">b</button>'
        '<style>p{}</style><a href="javascript:x()">c</a>'
    )
    assert len(markup_problems(bad)) == 5
    good = '<script src="/console/static/a.js?v=1"></script><p class="x">a</p><button type="submit">b</button>'
    assert markup_problems(good) == []
