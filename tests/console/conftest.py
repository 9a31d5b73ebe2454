"""Fixtures for the console's browser tests.

- ``console_gw`` (per module): the real gateway (``serve --demo``) with the console on and
  open sign-up, an admin bearer for setup through the admin API, and console credentials for
  an admin and a user.
- ``browser`` (per session): one headless Debian chromium for the whole run.
- ``page`` (per test): a fresh context (own cookies) on the module's gateway; at teardown the
  test fails if the browser reported a Content-Security-Policy violation or an uncaught
  JavaScript error.
- ``sign_in(page, name, password)``, ``shots(page, name)`` (full-page PNGs at 375 and
  1280 px in artifacts/screenshots/), ``axe(page)`` (vendored axe-core; fails on
  serious/critical violations).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.browser import (
    CSP_LISTENER,
    VIEWPORT_HEIGHT,
    ConsoleLog,
    check_axe,
    chromium_path,
    save_screenshots,
)
from tests.support.gateway import Gateway, run_gateway


@dataclass(frozen=True)
class Account:
    name: str
    password: str


@dataclass
class ConsoleGateway:
    gw: Gateway
    admin_token: str  # IMAGERELAY_ADMIN_TOKEN: setup and checks through the admin API
    admin: Account
    user: Account  # the demo user (tokens in every group, demo credit)

    @property
    def base_url(self) -> str:
        return self.gw.base_url

    def url(self, path: str) -> str:
        return self.gw.base_url + path

    def admin_api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.gw.base_url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )


def start_console_gateway(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[ConsoleGateway]:
    """`serve --demo` with the console on: it creates a demo admin and gives the demo user
    (tokens in every group, $100 of credit) a console password, printed and written out."""
    admin_token = "adm-" + secrets.token_urlsafe(24)
    env = {
        "IMAGERELAY_CONSOLE": "true",
        "IMAGERELAY_SIGNUP": "open",
        "IMAGERELAY_ADMIN_TOKEN": admin_token,
        **(extra_env or {}),
    }
    with run_gateway(tmp, extra_env=env) as gw:
        creds = gw.console
        assert creds.get("admin") and creds.get("user"), f"serve --demo wrote no console credentials: {creds}"
        yield ConsoleGateway(gw, admin_token, Account(**creds["admin"]), Account(**creds["user"]))


@pytest.fixture(scope="module")
def console_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleGateway]:
    chromium_path()  # skip (or fail in CI) before paying for a gateway
    yield from start_console_gateway(tmp_path_factory.mktemp("console"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One browser per module, not per session: Playwright's sync API keeps its event loop
    marked as running in this thread while it is started, so every later test that runs
    asyncio (``asyncio.run``, async fixtures) in the same session would fail with "cannot
    be called from a running event loop"."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox; a small /dev/shm in
        # containers would crash full-page screenshots, hence --disable-dev-shm-usage.
        b = pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, base_url: str, log: ConsoleLog, storage_state: str | None = None) -> tuple[Any, Any]:
    """A new context (own cookies, clipboard allowed) and page, its console recorded in log."""
    context = browser.new_context(
        base_url=base_url,
        viewport={"width": 1280, "height": VIEWPORT_HEIGHT},
        permissions=["clipboard-read", "clipboard-write"],
        storage_state=storage_state,
    )
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    log.attach(page)
    return context, page


def assert_clean(log: ConsoleLog) -> None:
    problems = [f"CSP violation: {c}" for c in log.csp] + [f"uncaught error: {e}" for e in log.page_errors]
    assert not problems, "the browser reported:\n" + "\n".join(problems)


@pytest.fixture
def browser_log() -> ConsoleLog:
    """What the browser of the test's ``page`` reported (console lines, errors, CSP)."""
    return ConsoleLog()


@pytest.fixture
def page(browser: Any, console_gw: ConsoleGateway, browser_log: ConsoleLog) -> Iterator[Any]:
    context, pg = open_page(browser, console_gw.base_url, browser_log)
    try:
        yield pg
    finally:
        context.close()
    assert_clean(browser_log)


def sign_in(page: Any, name: str, password: str) -> None:
    """Sign in through the form, by its labels, as a person would; lands on the console."""
    page.goto("/console/signin")
    page.get_by_label(re.compile(r"^(user ?)?name$", re.I)).fill(name)
    page.get_by_label(re.compile(r"^password$", re.I)).fill(password)
    page.get_by_role("button", name=re.compile(r"sign in", re.I)).click()
    page.wait_for_load_state()
    if "/console/signin" in page.url:
        raise AssertionError(f"sign-in as {name!r} did not leave the sign-in page:\n{page.inner_text('main')}")


@pytest.fixture(name="sign_in")
def sign_in_fixture() -> Callable[[Any, str, str], None]:
    return sign_in


signed_in = sign_in  # the contract's name for the same helper


@pytest.fixture
def shots() -> Callable[[Any, str], list[Path]]:
    return save_screenshots


@pytest.fixture
def axe() -> Callable[[Any], list[dict[str, Any]]]:
    return check_axe


@pytest.fixture(scope="module")
def ids(console_gw: ConsoleGateway) -> dict[str, str]:
    """Real ids for the pages that show one thing: a demo token, the demo user, a channel."""
    with console_gw.admin_api() as api:
        tokens = api.get("/admin/tokens", params={"user": console_gw.user.name}).json()["data"]
    return {"token_id": str(tokens[0]["id"]), "user_name": console_gw.user.name, "channel_name": "simulator-legacy"}


@pytest.fixture(scope="module")
def session_states(
    browser: Any, console_gw: ConsoleGateway, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Sign each role in once per module (login throttling is per account), saving its
    cookies; pages then open in fresh contexts with them."""
    states: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("states")
    for role, account in (("user", console_gw.user), ("admin", console_gw.admin)):
        log = ConsoleLog()
        context, pg = open_page(browser, console_gw.base_url, log)
        try:
            sign_in(pg, account.name, account.password)
            states[role] = folder / f"{role}.json"
            context.storage_state(path=str(states[role]))
        finally:
            context.close()
        assert_clean(log)
    return states


@pytest.fixture
def open_as(
    browser: Any, console_gw: ConsoleGateway, session_states: dict[str, Path], browser_log: ConsoleLog
) -> Iterator[Callable[[str], Any]]:
    """open_as('anon'|'user'|'admin'): a fresh page with that role's cookies; the test
    fails at teardown if the browser reported a CSP violation or an uncaught error."""
    contexts: list[Any] = []

    def open_(role: str) -> Any:
        context, pg = open_page(
            browser,
            console_gw.base_url,
            browser_log,
            storage_state=str(session_states[role]) if role != "anon" else None,
        )
        contexts.append(context)
        return pg

    yield open_
    for context in contexts:
        context.close()
    assert_clean(browser_log)
