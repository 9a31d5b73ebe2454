"""The admin dashboard in a real browser: calls drawn per route and channel. (The admin's
top-up, channel add/test/disable scenario is
``test_journey.py::test_admin_adds_tests_and_disables_a_channel``.)"""

from __future__ import annotations

from typing import Any

from tests.console.browser import check_axe, save_screenshots
from tests.console.conftest import ConsoleGateway, sign_in


def test_dashboard_draws_calls_per_route_and_channel(page: Any, console_gw: ConsoleGateway) -> None:
    import openai

    # Groups whose pools the journey's channel (official-pure, disabled) never served.
    for group in ("default", "Sora2Official"):
        client = openai.OpenAI(base_url=console_gw.gw.v1, api_key=console_gw.gw.tokens[group], max_retries=0)
        client.images.generate(
            model="gpt-image-2",
            prompt="a blue sphere",
            **({"quality": "low", "size": "1024x1024"} if group != "default" else {}),
        )
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
