"""Every console page, signed out, as a user and as an admin: no CSP violation or uncaught
error in the browser, axe-core with no serious/critical violation, a name on every
control, every interactive element reachable with Tab, no sideways scrolling at 375 px, and
screenshots at 375 and 1280 px.
Plus the keyboard-only sign-in: skip link, Tab order through the form, Enter to submit."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.console.browser import ConsoleLog, check_axe, save_screenshots
from tests.console.conftest import ConsoleGateway
from tests.console.pages import page_cases, sideways_overflow, unnamed_controls, unreachable_by_keyboard


def _shot_name(role: str, path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.removeprefix("/console").lower()).strip("-") or "home"
    return f"{role}-{slug}"


@pytest.mark.parametrize(("role", "path"), page_cases())
def test_console_page_is_accessible(
    open_as: Callable[[str], Any], role: str, path: str, ids: dict[str, str], browser_log: ConsoleLog
) -> None:
    page = open_as(role)
    response = page.goto(path.format(**ids))
    assert response is not None and response.status == 200, f"{path}: HTTP {response and response.status}"
    assert "/console/signin" not in page.url or role == "anon", f"{path} sent a signed-in {role} to sign in"
    page.wait_for_load_state("networkidle")
    # Screenshots first: a failing check below still leaves the picture to look at.
    save_screenshots(page, _shot_name(role, path))
    check_axe(page)
    assert unnamed_controls(page) == [], f"{path}: controls without an accessible name"
    wide = sideways_overflow(page, 375)
    assert not wide, f"{path}: wider than a 375 px screen because of:\n" + "\n".join(wide)
    assert unreachable_by_keyboard(page) == [], f"{path}: interactive elements Tab never reaches"
    assert browser_log.csp == [], browser_log.csp


def test_keyboard_alone_skips_to_content_and_signs_in(page: Any, console_gw: ConsoleGateway) -> None:
    page.goto("/console/signin")
    page.keyboard.press("Tab")
    skip = page.evaluate(
        "() => [document.activeElement.tagName, document.activeElement.textContent.trim(),"
        " document.activeElement.getAttribute('href')]"
    )
    assert skip[0] == "A" and re.search(r"skip", skip[1], re.I) and skip[2].endswith("#main"), skip
    assert page.evaluate(
        "() => { const r = document.activeElement.getBoundingClientRect(); "
        "return r.width > 0 && r.height > 0 && r.bottom > 0; }"
    ), "the focused skip link is not visible"
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


def tab_to(page: Any, selector: str, max_steps: int = 80) -> None:
    """Press Tab (only) until the element matching selector has the focus."""
    for _ in range(max_steps):
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reaches {selector}")


def test_playground_works_with_the_keyboard_alone(open_as: Callable[[str], Any]) -> None:
    """Choose a key and a model, write a prompt, generate and copy the code, all with keys."""
    page = open_as("user")
    page.goto("/console/playground")
    tab_to(page, "#pg-key")
    for _ in range(10):  # arrow through the closed select, as a keyboard user does
        if "GPTImage2 Enterprise" in page.evaluate("() => document.activeElement.selectedOptions[0].text"):
            break
        page.keyboard.press("ArrowDown")
    page.wait_for_selector("#pg-form:not([hidden])")
    tab_to(page, "#pg-prompt")
    page.keyboard.type("a lighthouse at dusk")
    tab_to(page, "#pg-submit")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => /^Done in/.test(document.getElementById('pg-progress').textContent)"
        " || !document.getElementById('pg-error').hidden",
        timeout=120_000,
    )
    assert page.locator("#pg-error").is_hidden(), page.inner_text("#pg-error")
    page.wait_for_selector("#pg-results img.pg-image")
    # The natural-size frame scrolls with the keyboard too; the code can be copied.
    tab_to(page, "#pg-results .pg-natural")
    tab_to(page, ".pg-copy[data-copy=pg-curl]")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('pg-copy-status').textContent.length > 0")
    assert unreachable_by_keyboard(page) == [], "playground controls Tab never reaches"


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [
        pytest.param("user", "/console/admin/users", 403, id="user:admin page (403)"),
        pytest.param("user", "/console/tokens/999999", 404, id="user:no such key (404)"),
        pytest.param("anon", "/console/no-such-page", 404, id="anon:no such page (404)"),
    ],
)
def test_error_pages_are_accessible(open_as: Callable[[str], Any], role: str, path: str, status: int) -> None:
    page = open_as(role)
    response = page.goto(path)
    assert response is not None and response.status == status
    save_screenshots(page, _shot_name(role, path) + f"-{status}")
    check_axe(page)
    assert page.locator("main h1").count() == 1, "an error page without its heading in <main>"
