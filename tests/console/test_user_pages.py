"""The user pages in a real browser (Debian chromium via Playwright): create a key through
the group picker, copy it and the curl snippet with the buttons and run that snippet,
revoke the key; usage with a filter, the chart and the CSV download; the pricing matrix.
Every page is checked with axe-core and photographed at 375 and 1280 px."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import ConsoleGateway


@pytest.fixture
def user_page(open_as: Callable[[str], Any]) -> Any:
    return open_as("user")


def test_create_copy_run_and_revoke_a_key(user_page: Any, console_gw: ConsoleGateway, shots: Any, axe: Any) -> None:
    page = user_page
    page.goto("/console/tokens/new")
    axe(page)
    shots(page, "user-token-new")
    page.get_by_label("Name", exact=True).fill("browser key")
    page.get_by_label("GPTImage2 Enterprise").check()
    page.get_by_role("button", name="Create key").click()
    page.wait_for_load_state()
    key = page.locator("#new-key").inner_text().strip()
    assert key.startswith("sk-")
    page.get_by_role("button", name="Copy key").click()
    page.get_by_text("Copied.").first.wait_for()
    assert page.evaluate("() => navigator.clipboard.readText()") == key
    axe(page)
    shots(page, "user-token-created")

    # The copied curl line works as it is: the key, base URL, group's model are filled in.
    page.get_by_role("button", name="Copy curl").first.click()
    snippet = page.evaluate("() => navigator.clipboard.readText()")
    assert key in snippet and console_gw.base_url + "/v1/images/generations" in snippet
    ran = subprocess.run(["bash", "-c", snippet + " -sS"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and '"b64_json"' in ran.stdout, ran.stderr[-500:]

    page.get_by_role("button", name="Revoke this key").click()
    page.wait_for_url(re.compile(r"/console/tokens$"))
    assert "is revoked" in page.get_by_role("status").first.inner_text()
    row = page.get_by_role("row").filter(has_text="browser key")
    assert "revoked" in row.inner_text()
    refused = httpx.post(
        console_gw.gw.v1 + "/images/generations",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-image-2", "prompt": "x"},
    )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"
    # The list and the key's page never show the secret again.
    assert key not in page.content()
    row.get_by_role("link").click()
    assert key not in page.content() and "sk-PASTE-YOUR-KEY-HERE" in page.content()


def test_usage_filter_chart_and_csv(user_page: Any, console_gw: ConsoleGateway, shots: Any, axe: Any) -> None:
    token = console_gw.gw.tokens["default"]
    made = httpx.post(
        console_gw.gw.v1 + "/images/generations",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "gpt-image-2", "prompt": "usage page"},
        timeout=120,
    )
    assert made.status_code == 200
    page = user_page
    page.goto("/console/usage")
    assert page.locator("figure.chart svg").is_visible()
    key_select = page.get_by_label("Key")
    key_select.select_option(key_select.locator("option", has_text="demo-default (").get_attribute("value"))
    page.get_by_label("Status").select_option("ok")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"token=\d+"))
    calls = int(page.locator("#total-calls").inner_text())
    assert calls >= 1
    assert page.get_by_role("cell", name="demo-default", exact=False).count() >= 1
    axe(page)
    shots(page, "user-usage-filtered")
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    assert len(rows) == calls and all(r["token"].startswith("demo-default") and r["status"] == "200" for r in rows)


def test_pricing_matrix(user_page: Any, shots: Any, axe: Any) -> None:
    page = user_page
    page.goto("/console/pricing")
    table = page.get_by_role("table")
    for group in ("default", "Sora2Official", "GPTImage2 Enterprise"):
        assert table.get_by_role("cell", name=group, exact=True).count() >= 1
    assert "$0.03 per call" in table.inner_text() and "usage ×1.2" in table.inner_text()
    axe(page)
    shots(page, "user-pricing")
