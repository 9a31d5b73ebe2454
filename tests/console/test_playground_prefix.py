"""The playground under a path prefix, behind a proxy that strips it (nginx's
``location /relay/ { proxy_pass http://gateway/; }``): the page's script reaches the API,
the test-key endpoint and its own assets through the prefix, and its snippets name it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.console.browser import ConsoleLog, chromium_path
from tests.console.conftest import ConsoleGateway, assert_clean, open_page, start_console_gateway
from tests.console.prefix_proxy import prefix_proxy
from tests.console.test_playground import ENTERPRISE, LONG, request_id_shown, usage_record

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleGateway, str]]:
    chromium_path()
    tmp: Path = tmp_path_factory.mktemp("playground-prefix")
    with (
        contextmanager(start_console_gateway)(tmp, extra_env={"IMAGERELAY_ROOT_PATH": "/relay"}) as gw,
        prefix_proxy(gw.base_url, "/relay") as proxy,
    ):
        yield gw, proxy + "/relay"


def test_playground_works_under_a_path_prefix(browser: Any, prefixed: tuple[ConsoleGateway, str]) -> None:
    gw, site = prefixed
    log = ConsoleLog()
    context, page = open_page(browser, site, log)
    try:
        page.goto(site + "/playground")  # the proxy's address; redirects to sign in, then back
        page.get_by_label(re.compile(r"^(user ?)?name$", re.I)).fill(gw.user.name)
        page.get_by_label(re.compile(r"^password$", re.I)).fill(gw.user.password)
        page.get_by_role("button", name=re.compile(r"sign in", re.I)).click()
        page.goto(site + "/console/playground")
        page.get_by_label("API key").select_option(ENTERPRISE)
        expect(page.get_by_label("Model", exact=True)).to_be_enabled()
        page.get_by_label("Prompt").fill("a harbour at night")
        page.get_by_label("Size", exact=True).select_option("1024x1024")
        page.get_by_label("Partial images (streaming)").select_option("1")  # SSE through the proxy
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
        expect(page.get_by_role("img", name="Partial image 1")).to_be_visible()
        assert usage_record(gw, request_id_shown(page))["status"] == 200
        page.get_by_label("Partial images (streaming)").select_option("0")  # and a job
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#pg-progress")).to_have_text(re.compile(r"^Done in \d+ s\.$"), timeout=LONG)
        assert usage_record(gw, request_id_shown(page))["status"] == 200
        assert f"'{site}/v1/images/generations'" in page.inner_text("#pg-curl")
        assert f'base_url="{site}/v1"' in page.inner_text("#pg-python")
    finally:
        context.close()
    assert_clean(log)
