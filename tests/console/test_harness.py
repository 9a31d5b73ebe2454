"""The browser harness itself can fail: axe-core reports a real violation, a CSP violation
under the console's policy is seen, and screenshots come out at both widths. Served by a
tiny page app with the console's CSP, so these hold whatever the console pages look like."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.console.browser import WIDTHS, ConsoleLog, axe_violations, check_axe, save_screenshots
from tests.console.conftest import open_page
from tests.console.pages import sideways_overflow, tab_walk, unnamed_controls
from tests.support.servers import run_asgi

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

GOOD = """<!doctype html><html lang="en"><head><title>Good</title></head><body>
<a href="#main">Skip to content</a><main id="main"><h1>Good</h1>
<form><label for="n">Name</label><input id="n" name="n"><button>Go</button></form></main></body></html>"""
# An unlabelled input (axe "label", critical) and an inline script the CSP must block.
BAD = """<!doctype html><html lang="en"><head><title>Bad</title></head><body><main><h1>Bad</h1>
<input name="q"><script>document.title = 'ran';</script>
<p>averyveryveryveryveryveryveryveryveryveryveryveryveryveryverylongunbreakablewordthatrunsoutofitsbox</p>
</main></body></html>"""


def _page(html: str) -> Any:
    async def endpoint(request: Any) -> Response:
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    return endpoint


@pytest.fixture(scope="module")
def pages_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/good", _page(GOOD)), Route("/bad", _page(BAD))])
    with run_asgi(app) as url:
        yield url


@pytest.fixture
def plain_page(browser: Any, pages_url: str) -> Iterator[tuple[Any, ConsoleLog]]:
    log = ConsoleLog()
    context, page = open_page(browser, pages_url, log)
    try:
        yield page, log
    finally:
        context.close()


def test_axe_passes_a_labelled_page_and_fails_an_unlabelled_control(plain_page: tuple[Any, ConsoleLog]) -> None:
    page, _ = plain_page
    page.goto("/good")
    assert [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")] == []
    page.goto("/bad")
    with pytest.raises(pytest.fail.Exception) as failed:
        check_axe(page)
    message = str(failed.value)
    assert "label" in message and "input" in message, message


def test_a_csp_violation_is_reported_and_the_inline_script_did_not_run(plain_page: tuple[Any, ConsoleLog]) -> None:
    page, log = plain_page
    page.goto("/good")
    page.wait_for_load_state("load")
    assert log.csp == []
    page.goto("/bad")
    page.wait_for_load_state("load")
    page.wait_for_function("() => true")  # let the violation event's console line arrive
    assert page.title() == "Bad"  # the policy held
    assert any("script-src" in line for line in log.csp), log.csp


def test_screenshots_are_full_page_pngs_at_both_widths(plain_page: tuple[Any, ConsoleLog]) -> None:
    page, _ = plain_page
    page.goto("/good")
    paths = save_screenshots(page, "harness-good")
    assert [p.name for p in paths] == [f"harness-good-{w}.png" for w in WIDTHS]
    for path, width in zip(paths, WIDTHS, strict=True):
        with Image.open(path) as img:
            assert img.width == width
    assert page.viewport_size == {"width": 1280, "height": 900}


def test_named_controls_tab_walk_and_reflow_checks_can_fail(plain_page: tuple[Any, ConsoleLog]) -> None:
    page, _ = plain_page
    page.goto("/good")
    assert unnamed_controls(page) == []
    elements, order = tab_walk(page)
    assert order == list(range(len(elements))) and len(elements) == 3, (elements, order)  # skip link, input, button
    assert sideways_overflow(page, 375) == []
    page.goto("/bad")
    assert [html for html in unnamed_controls(page) if 'name="q"' in html], "the unlabelled input was not found"
    assert [html for html in sideways_overflow(page, 375) if "unbreakable" in html], "the long word was not found"
