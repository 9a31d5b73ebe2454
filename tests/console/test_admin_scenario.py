"""The issue's admin scenario in a real browser: an admin tops up a user, adds a channel,
tests it, and disables it, by the controls' labels as a person would. The channel's
upstream is the project's simulator speaking the OpenAI protocol."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from imagerelay_sim.server import create_upstream_app
from tests.console.browser import check_axe, save_screenshots
from tests.console.conftest import ConsoleGateway, sign_in
from tests.support.servers import run_asgi

UPSTREAM_KEY = "sk-scenario-upstream-secret-1234"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with run_asgi(create_upstream_app("openai", api_keys=[UPSTREAM_KEY])) as url:
        yield url


def _balance(console_gw: ConsoleGateway, name: str) -> int:
    with console_gw.admin_api() as api:
        users = api.get("/admin/users").json()["data"]
    return int(next(u for u in users if u["name"] == name)["balance_micros"])


def test_admin_tops_up_adds_tests_and_disables_a_channel(page: Any, console_gw: ConsoleGateway,
                                                         upstream: str) -> None:
    sign_in(page, console_gw.admin.name, console_gw.admin.password)
    user = console_gw.user.name
    before = _balance(console_gw, user)

    # Top up the demo user from the users list.
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_role("link", name=user, exact=True).click()
    page.get_by_label("Amount in USD").fill("7.250001")
    page.get_by_label(re.compile("^Reason")).fill("browser top-up")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    assert "is now" in page.locator(".flash").inner_text()
    assert _balance(console_gw, user) == before + 7_250_001
    assert "browser top-up" in page.locator("#ledger").inner_text()
    save_screenshots(page, "admin-scenario-topped-up")

    # Add a channel with its key.
    page.get_by_role("link", name="Channels", exact=True).click()
    page.get_by_label("Name", exact=True).fill("scenario-openai")
    page.get_by_label("Type").select_option("openai")
    page.get_by_label("official-pure").check()
    page.get_by_label("API key").fill(UPSTREAM_KEY)
    page.get_by_label("Base URL").fill(upstream + "/v1")
    page.get_by_role("button", name="Add channel").click()
    page.wait_for_url(re.compile(r"/console/admin/channels/scenario-openai$"))
    assert "never shown again" in page.locator(".flash").inner_text()
    assert UPSTREAM_KEY not in page.content()

    # Test it: the result is shown on the page.
    page.get_by_role("button", name="Test scenario-openai").click()
    page.wait_for_load_state()
    result = page.locator("#test-result")
    assert "Test passed" in result.inner_text(), result.inner_text()
    check_axe(page)
    save_screenshots(page, "admin-scenario-channel-tested")

    # Disable it with a reason.
    page.get_by_label("Reason (shown in this list)").fill("scenario over")
    page.get_by_role("button", name="Disable scenario-openai").click()
    page.wait_for_load_state()
    assert "disabled" in page.locator(".state").first.inner_text()
    assert "scenario over" in page.locator("main").inner_text()
    with console_gw.admin_api() as api:
        channel = next(c for c in api.get("/admin/channels").json()["data"] if c["name"] == "scenario-openai")
    assert channel["enabled"] is False and channel["health"]["disabled_reason"] == "scenario over"
    assert page.get_by_role("button", name="Enable scenario-openai").is_visible()
    save_screenshots(page, "admin-scenario-channel-disabled")


def test_dashboard_draws_calls_per_route_and_channel(page: Any, console_gw: ConsoleGateway) -> None:
    import openai

    # Groups whose pools the scenario above leaves alone (its channel took official-pure over).
    for group in ("default", "Sora2Official"):
        client = openai.OpenAI(base_url=console_gw.gw.v1, api_key=console_gw.gw.tokens[group], max_retries=0)
        client.images.generate(model="gpt-image-2", prompt="a blue sphere",
                               **({"quality": "low", "size": "1024x1024"} if group != "default" else {}))
    sign_in(page, console_gw.admin.name, console_gw.admin.password)
    page.get_by_role("link", name="Dashboard", exact=True).click()
    page.get_by_label("Lines per").select_option("channel")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    calls = page.get_by_role("figure", name="Calls")
    assert calls.locator("svg polyline").count() >= 2  # one line per channel that served a call
    legend = calls.locator(".legend").inner_text()
    with console_gw.admin_api() as api:
        served = {r["channel"] for r in api.get("/admin/usage", params={"limit": 50}).json()["data"] if r["channel"]}
    assert served and all(name in legend for name in served)
    check_axe(page)
    save_screenshots(page, "admin-dashboard-with-calls")
