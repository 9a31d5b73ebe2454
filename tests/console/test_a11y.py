"""Every console page, signed out, as a user and as an admin: the contract's security headers,
no CSP violation in the browser, axe-core with no serious/critical violation, a name on every
control, every interactive element reachable with Tab, and screenshots at 375 and 1280 px.
Plus the keyboard-only sign-in: skip link, Tab order through the form, Enter to submit."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.browser import CSP_LISTENER, ConsoleLog, check_axe, save_screenshots
from tests.console.conftest import ConsoleGateway, assert_clean, open_page, sign_in
from tests.console.pages import security_header_problems, unnamed_controls, unreachable_by_keyboard

SIGNED_OUT = ["/console/signin", "/console/signup"]
USER = ["/console/", "/console/tokens", "/console/tokens/new", "/console/tokens/{token_id}", "/console/usage",
        "/console/pricing", "/console/password", "/console/playground"]
ADMIN = ["/console/admin/", "/console/admin/users", "/console/admin/users/{user_name}", "/console/admin/tokens",
         "/console/admin/channels", "/console/admin/channels/{channel_name}", "/console/admin/catalog",
         "/console/admin/usage"]


@pytest.fixture(scope="module")
def ids(console_gw: ConsoleGateway) -> dict[str, str]:
    """Real ids for the pages that show one thing: a demo token, the demo user, a channel."""
    with console_gw.admin_api() as api:
        tokens = api.get("/admin/tokens", params={"user": console_gw.user.name}).json()["data"]
    return {"token_id": str(tokens[0]["id"]), "user_name": console_gw.user.name, "channel_name": "simulator-legacy"}


@pytest.fixture(scope="module")
def session_states(browser: Any, console_gw: ConsoleGateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sign each role in once per module (login throttling is per account, and a fresh
    context per page keeps pages independent); pages load with the saved cookies."""
    states: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("states")
    for role, account in (("user", console_gw.user), ("admin", console_gw.admin)):
        log = ConsoleLog()
        context, page = open_page(browser, console_gw.base_url, log)
        try:
            sign_in(page, account.name, account.password)
            states[role] = folder / f"{role}.json"
            context.storage_state(path=str(states[role]))
        finally:
            context.close()
        assert_clean(log)
    return states


@pytest.fixture
def open_as(browser: Any, console_gw: ConsoleGateway, session_states: dict[str, Path],
            browser_log: ConsoleLog) -> Iterator[Callable[[str], Any]]:
    """open_as('anon'|'user'|'admin'): a fresh page with that role's cookies; the test
    fails at teardown if the browser reported a CSP violation or an uncaught error."""
    contexts: list[Any] = []

    def open_(role: str) -> Any:
        state = str(session_states[role]) if role != "anon" else None
        context = browser.new_context(base_url=console_gw.base_url, viewport={"width": 1280, "height": 900},
                                      storage_state=state)
        context.add_init_script(CSP_LISTENER)
        contexts.append(context)
        page = context.new_page()
        browser_log.attach(page)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert_clean(browser_log)


CASES = [pytest.param(role, path, id=f"{role}:{path}")
         for role, paths in (("anon", SIGNED_OUT), ("user", USER), ("admin", ADMIN)) for path in paths]
# The admin sees the user pages too, with the admin nav: the richest header, checked once.
CASES.append(pytest.param("admin", "/console/", id="admin:/console/ (home with the admin nav)"))


def _shot_name(role: str, path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.removeprefix("/console").lower()).strip("-") or "home"
    return f"{role}-{slug}"


@pytest.mark.parametrize(("role", "path"), CASES)
def test_console_page_is_accessible_and_keeps_its_csp(open_as: Callable[[str], Any], role: str, path: str,
                                                       ids: dict[str, str], browser_log: ConsoleLog) -> None:
    page = open_as(role)
    response = page.goto(path.format(**ids))
    assert response is not None and response.status == 200, f"{path}: HTTP {response and response.status}"
    assert "/console/signin" not in page.url or role == "anon", f"{path} sent a signed-in {role} to sign in"
    assert security_header_problems(response.headers) == [], path
    page.wait_for_load_state("networkidle")
    # Screenshots first: a failing check below still leaves the picture to look at.
    save_screenshots(page, _shot_name(role, path))
    check_axe(page)
    assert unnamed_controls(page) == [], f"{path}: controls without an accessible name"
    assert unreachable_by_keyboard(page) == [], f"{path}: interactive elements Tab never reaches"
    assert browser_log.csp == [], browser_log.csp


def test_static_assets_carry_the_security_headers(console_gw: ConsoleGateway, browser: Any) -> None:
    """The stylesheet and scripts come from 'self' with nosniff; a page's CSP is on every
    console response, errors included."""
    import httpx

    page_html = httpx.get(console_gw.url("/console/signin")).text
    assets = re.findall(r'(?:href|src)="([^"]*/console/static/[^"]+)"', page_html)
    assert assets, "the sign-in page loads no stylesheet from /console/static/"
    for asset in assets:
        url = asset if asset.startswith("http") else console_gw.url(asset)
        r = httpx.get(url)
        assert r.status_code == 200, asset
        assert r.headers.get("x-content-type-options") == "nosniff", asset
    missing = httpx.get(console_gw.url("/console/no-such-page"))
    assert missing.status_code == 404
    assert missing.headers.get("content-security-policy"), "a console 404 without the CSP"


def test_keyboard_alone_skips_to_content_and_signs_in(page: Any, console_gw: ConsoleGateway) -> None:
    page.goto("/console/signin")
    page.keyboard.press("Tab")
    skip = page.evaluate("() => [document.activeElement.tagName, document.activeElement.textContent.trim(),"
                         " document.activeElement.getAttribute('href')]")
    assert skip[0] == "A" and re.search(r"skip", skip[1], re.I) and skip[2].endswith("#main"), skip
    assert page.evaluate("() => { const r = document.activeElement.getBoundingClientRect(); "
                         "return r.width > 0 && r.height > 0 && r.bottom > 0; }"), "the focused skip link is not visible"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main", "the skip link does not move focus to <main>"
    # From <main>, Tab reaches the user name, then the password, then the submit button.
    reached = []
    for _ in range(10):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => { const e = document.activeElement; return e.id || e.type || e.tagName; }"))
        if reached[-1] == "submit":
            break
    assert [r for r in reached if r in ("name", "password", "submit")] == ["name", "password", "submit"], reached
    # Type into the fields with the keyboard only and submit with Enter.
    page.focus("#name")
    page.keyboard.type(console_gw.user.name)
    page.keyboard.press("Tab")
    page.keyboard.type(console_gw.user.password)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/$"))
    # Signed in: the main actions are links and buttons in the Tab order.
    page.keyboard.press("Tab")
    names = []
    for _ in range(40):
        page.keyboard.press("Tab")
        names.append(page.evaluate("() => (document.activeElement.textContent || '').trim()"))
    for action in ("Tokens", "Playground", "Usage", "Sign out"):
        assert any(n.startswith(action) for n in names), f"Tab never reaches {action!r}: {names}"
