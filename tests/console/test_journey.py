"""The issue's "Done when" journey, in one real browser against one real gateway.

A newcomer signs up; an admin tops them up; they create a key in `GPTImage2 Enterprise`,
generate with quality high in the playground and see the image at its natural size; switch
to `gpt-image-2-vip` (the default group's size-enhanced route) and see exactly its 30 sizes
and no quality control; have a custom size refused inline in the gateway's own words; edit
two uploaded images with a mask (a mask of the wrong size is refused inline first); watch
partial images arrive on a streaming call; find their calls in usage and their balance
lowered by exactly those calls; copy the curl snippets (the key's quick start and the
playground's, read back from the clipboard) and run them; revoke the key and see it
refused. Separately an admin adds a channel with a key, tests it and disables it.

Every page visited is screenshotted (375 and 1280 px) and checked with axe-core, and the
`page` fixtures fail the test on any CSP violation or uncaught script error.
"""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

import imagerelay.catalog
from imagerelay_sim.server import create_upstream_app
from tests.console.browser import ConsoleLog, check_axe, save_screenshots
from tests.console.conftest import Account, ConsoleGateway, assert_clean, open_page, sign_in
from tests.console.pages import sideways_overflow
from tests.support.servers import run_asgi

ENTERPRISE = "GPTImage2 Enterprise"
# Generous liveness bound for one simulated image call on a busy 2-core machine.
CALL_TIMEOUT_MS = 120_000


def vip_sizes() -> list[str]:
    """The 30 sizes of the size-enhanced route, from the shipped catalog itself."""
    catalog = yaml.safe_load((Path(imagerelay.catalog.__file__).parent / "default.yaml").read_text())
    table = catalog["param_profiles"]["vip"]["size_table"]
    return [size for tiers in table.values() for size in tiers.values()]


def png_file(path: Path, width: int, height: int, rgba: tuple[int, int, int, int]) -> Path:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), rgba).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def money(text: str) -> Decimal:
    match = re.search(r"-?\$\s?([0-9][0-9,]*\.?[0-9]*)", text)
    assert match, f"no dollar amount in {text!r}"
    return Decimal(match.group(1).replace(",", ""))


def look(page: Any, shot: str) -> None:
    """Screenshot the page as it is now, check it with axe, and that it fits a 375 px screen."""
    save_screenshots(page, shot)
    check_axe(page)
    wide = sideways_overflow(page, 375)
    assert not wide, f"{shot}: wider than a 375 px screen because of:\n" + "\n".join(wide)


def home_balance(page: Any) -> Decimal:
    return money(page.get_by_role("region", name="Balance").inner_text())


def visit(page: Any, path: str, shot: str) -> Any:
    """Go to a console page, wait for it, then `look` at it."""
    response = page.goto(path)
    assert response is not None and response.status == 200, f"{path}: HTTP {response and response.status}"
    page.wait_for_load_state("networkidle")
    look(page, shot)
    return response


@pytest.fixture
def admin_page(browser: Any, console_gw: ConsoleGateway) -> Iterator[Any]:
    """A second browser context, signed in as the demo admin (its own cookies)."""
    log = ConsoleLog()
    context, page = open_page(browser, console_gw.base_url, log)
    try:
        sign_in(page, console_gw.admin.name, console_gw.admin.password)
        yield page
    finally:
        context.close()
    assert_clean(log)


def sign_up(page: Any, name: str, password: str) -> None:
    visit(page, "/console/signup", "journey-signup")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password again").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(lambda url: "/console/signup" not in url)  # it suggests creating a first key
    assert name in page.inner_text("header"), "signed up but not signed in as the new user"


def admin_tops_up(admin: Any, name: str, amount: str, reason: str) -> None:
    visit(admin, f"/console/admin/users/{name}", "journey-admin-user")
    before = money(admin.inner_text("#balance"))
    admin.get_by_label("Amount in USD").fill(amount)
    admin.get_by_label(re.compile(r"^Reason")).fill(reason)
    admin.get_by_role("button", name="Apply").click()
    admin.wait_for_load_state()
    assert money(admin.inner_text("#balance")) == before + Decimal(amount)
    assert reason in admin.inner_text("#ledger")


def api_balance(console_gw: ConsoleGateway, name: str) -> int:
    with console_gw.admin_api() as api:
        users = api.get("/admin/users").json()["data"]
    return int(next(u for u in users if u["name"] == name)["balance_micros"])


def create_key(page: Any, group: str, key_name: str) -> tuple[str, str]:
    """Create a key in `group` from the console; returns (token id, the key from the clipboard)."""
    visit(page, "/console/tokens/new", "journey-token-new")

    # The group picker explains each group's route, billing and parameters.
    def choice(name: str) -> str:
        text: str = page.locator(".group-choice", has=page.get_by_role("radio", name=name, exact=True)).inner_text()
        return text

    assert re.search(r"\$0\.03 per call, no size or quality", choice("default")), choice("default")
    assert re.search(r"official price ×1\.2, quality and custom sizes", choice(ENTERPRISE)), choice(ENTERPRISE)
    page.get_by_label("Name", exact=True).fill(key_name)
    page.get_by_role("radio", name=group, exact=True).check()
    page.get_by_role("button", name="Create key").click()
    shown_key = page.locator("#new-key")
    shown_key.wait_for()
    shown = shown_key.inner_text().strip()
    page.get_by_role("button", name="Copy key").click()
    page.wait_for_function(
        "() => document.querySelector('[data-copy-status=\"new-key\"]').textContent.includes('Copied')"
    )
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == shown and copied.startswith("sk-"), (copied, shown)
    look(page, "journey-token-created")
    # The quick start's curl, the key filled in, copied from the page: it works as it is.
    page.get_by_role("button", name="Copy curl").first.click()
    page.wait_for_function(
        "() => document.querySelector('[data-copy-status=\"curl-1\"]').textContent.includes('Copied')"
    )
    quick = page.evaluate("() => navigator.clipboard.readText()")
    assert "Bearer " + copied in quick, quick
    ran = subprocess.run(["bash", "-c", quick], capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["data"][0]["b64_json"], ran.stdout[:300]
    # Shown once: the key's own page, reached from the list, never shows it again.
    visit(page, "/console/tokens", "journey-tokens")
    page.get_by_role("link", name=key_name, exact=True).click()
    page.wait_for_url(re.compile(r"/console/tokens/\d+$"))
    token_id = page.url.rsplit("/", 1)[1]
    look(page, "journey-token")
    assert copied not in page.content()
    assert group in page.inner_text("main")
    return token_id, copied


def choose_key(page: Any, option_text: re.Pattern[str], paste: str | None = None) -> None:
    """Pick a key in the playground by its option's text. The page uses a key this tab kept
    when the console showed it, or asks for it: then `paste` is typed in."""
    value = page.locator("#pg-key option").filter(has_text=option_text).first.get_attribute("value")
    page.get_by_label("API key", exact=True).select_option(value)
    page.wait_for_function(
        "() => !document.getElementById('pg-paste-field').hidden"
        " || !document.getElementById('pg-model').disabled"
        " || /refused/.test(document.getElementById('pg-key-status').textContent)"
    )
    if page.locator("#pg-paste-field").is_visible():
        assert paste is not None, "the playground asks for a key it should have kept"
        page.get_by_label(re.compile(r"^This token's key")).fill(paste)
        page.get_by_role("button", name="Use this key").click()


def wait_for_result(page: Any) -> None:
    page.wait_for_function(
        "() => { const p = document.getElementById('pg-progress').textContent;"
        " return /^Done in/.test(p) || !document.getElementById('pg-error').hidden; }",
        timeout=CALL_TIMEOUT_MS,
    )
    error = page.locator("#pg-error")
    assert error.is_hidden(), f"the gateway refused the call: {error.inner_text()}"
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#pg-results img')).every(i => i.complete"
        " && i.naturalWidth > 0) && document.querySelectorAll('#pg-results img').length > 0"
    )


def natural_and_rendered(page: Any) -> list[dict[str, float]]:
    result: list[dict[str, float]] = page.evaluate(
        "() => Array.from(document.querySelectorAll('#pg-results img.pg-image')).map(i => {"
        " const r = i.getBoundingClientRect();"
        " return {nw: i.naturalWidth, nh: i.naturalHeight, w: r.width, h: r.height}; })"
    )
    return result


def cost_micros(page: Any) -> int:
    page.wait_for_function(
        "() => document.getElementById('pg-cost').dataset.costMicros !== undefined", timeout=CALL_TIMEOUT_MS
    )
    return int(page.get_attribute("#pg-cost", "data-cost-micros"))  # type: ignore[arg-type]


def test_user_journey(page: Any, admin_page: Any, console_gw: ConsoleGateway, tmp_path: Path) -> None:
    user = Account("newcomer-" + secrets.token_hex(3), "pw-" + secrets.token_urlsafe(12))

    # Sign up (open sign-up), landing signed in on the home page.
    sign_up(page, user.name, user.password)
    visit(page, "/console/", "journey-home-new")
    assert home_balance(page) == 0

    # An admin tops the newcomer up from the admin pages.
    admin_tops_up(admin_page, user.name, "5", "welcome credit (journey)")
    visit(page, "/console/", "journey-home-credited")
    balance_before = home_balance(page)
    assert balance_before == Decimal("5")

    # A key in GPTImage2 Enterprise, its secret copied from the page.
    token_id, key = create_key(page, ENTERPRISE, "journey key")

    # Playground: the Enterprise key (pasted: the server keeps only its hint), quality high.
    visit(page, "/console/playground", "journey-playground")
    choose_key(page, re.compile(r"journey key"), paste=key)
    page.wait_for_selector("#pg-form:not([hidden])")
    assert page.locator("#pg-model").input_value() == "gpt-image-2"
    assert page.get_by_label("Quality").is_visible()
    page.get_by_label("Prompt").fill("a white ceramic mug on a gray desk")
    page.get_by_label("Quality").select_option("high")
    page.get_by_label("Size", exact=True).select_option("1536x1024")
    check_axe(page)  # the whole form, as the route shaped it
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page)
    look(page, "journey-playground-result")
    (shown,) = natural_and_rendered(page)
    assert (shown["nw"], shown["nh"]) == (1536, 1024), shown
    assert (shown["w"], shown["h"]) == (1536, 1024), f"the image is scaled, not at its natural size: {shown}"
    assert "1536 × 1024 px" in page.inner_text("#pg-results")
    costs = [cost_micros(page)]
    assert costs[0] > 0

    # The curl snippet of exactly this form, copied from the page, runs as it is.
    curl_text = page.inner_text("#pg-curl")
    assert "Bearer " + key in curl_text and '"quality":"high"' in curl_text, curl_text
    page.get_by_role("button", name="Copy curl").click()
    page.wait_for_function("() => document.getElementById('pg-copy-status').textContent.includes('Copied')")
    snippet = page.evaluate("() => navigator.clipboard.readText()")
    assert snippet == curl_text
    workdir = tmp_path / "curl"
    workdir.mkdir()
    curl = shutil.which("curl")
    assert curl, "curl is needed to run the copied snippet"
    ran = subprocess.run(["bash", "-c", snippet], cwd=workdir, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads((workdir / "response.json").read_text())
    assert "error" not in answer, answer
    with Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))) as img:
        assert img.size == (1536, 1024)

    # A custom size the official rules refuse is explained inline, in the gateway's own words.
    page.get_by_label("Size", exact=True).select_option("custom")
    custom = page.get_by_label(re.compile(r"^Custom size"))
    custom.fill("1000x1000")
    size_error = page.locator("#pg-size-error")
    size_error.wait_for(state="visible")
    assert custom.get_attribute("aria-invalid") == "true"
    gateway_says = httpx.post(
        console_gw.gw.v1 + "/images/generations",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-image-2", "prompt": "x", "size": "1000x1000"},
        timeout=60,
    )
    assert gateway_says.status_code == 400
    assert size_error.inner_text().strip() == gateway_says.json()["error"]["message"]
    look(page, "journey-playground-refused-size")
    custom.fill("1024x1024")
    size_error.wait_for(state="hidden")

    # Edit: two uploaded images and a mask. A mask of another size is refused by the gateway
    # and the refusal shows next to the mask field; the right mask goes through.
    images = [
        png_file(tmp_path / "a.png", 1024, 1024, (200, 30, 30, 255)),
        png_file(tmp_path / "b.png", 1024, 1024, (30, 30, 200, 255)),
    ]
    wrong_mask = png_file(tmp_path / "mask-small.png", 512, 512, (0, 0, 0, 0))
    mask = png_file(tmp_path / "mask.png", 1024, 1024, (0, 0, 0, 0))
    page.get_by_label("Edit images").check()
    page.get_by_label("Images to edit").set_input_files([str(p) for p in images])
    assert page.locator("#pg-image-previews img").count() == 2
    page.get_by_label(re.compile(r"^Mask")).set_input_files(str(wrong_mask))
    assert page.locator("#pg-mask-preview img").count() == 1
    page.get_by_role("button", name="Edit", exact=True).click()
    mask_error = page.locator("#pg-mask-error")
    mask_error.wait_for(state="visible", timeout=CALL_TIMEOUT_MS)
    assert re.search(r"same dimensions", mask_error.inner_text()), mask_error.inner_text()
    look(page, "journey-playground-refused-mask")
    page.get_by_label(re.compile(r"^Mask")).set_input_files(str(mask))
    page.get_by_role("button", name="Edit", exact=True).click()
    wait_for_result(page)
    assert mask_error.is_hidden()
    assert [(s["nw"], s["nh"]) for s in natural_and_rendered(page)] == [(1024, 1024)]
    look(page, "journey-playground-edit")
    costs.append(cost_micros(page))

    # Streaming: partial images appear before the final image.
    page.get_by_label("Text to image").check()
    page.evaluate("""() => {
      window.__order = [];
      new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) =>
        window.__order.push(r.target.id)))).observe(document.getElementById('pg-output'), {childList: true, subtree: true});
    }""")
    page.get_by_label("Partial images (streaming)").select_option("2")
    page.get_by_role("button", name="Generate").click()
    page.locator("#pg-partials img").first.wait_for(state="attached", timeout=CALL_TIMEOUT_MS)
    wait_for_result(page)
    order = page.evaluate("() => window.__order")
    assert order.count("pg-partials") == 2, order
    assert order.index("pg-partials") < order.index("pg-results"), f"no partial image before the result: {order}"
    assert page.evaluate(
        "() => Array.from(document.querySelectorAll('#pg-partials img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    look(page, "journey-playground-streamed")
    costs.append(cost_micros(page))

    # The size-enhanced route: exactly its 30 sizes, and no quality control.
    choose_key(page, re.compile(r"Session test key · default"))
    page.wait_for_function(
        "() => Array.from(document.getElementById('pg-model').options).some(o => o.value === 'gpt-image-2-vip')"
    )
    page.get_by_label("Model", exact=True).select_option("gpt-image-2-vip")
    offered = page.evaluate("() => Array.from(document.querySelectorAll('#pg-size option')).map(o => o.value)")
    assert sorted(offered) == sorted(vip_sizes()) and len(offered) == 30, offered
    assert page.locator("#pg-size optgroup").count() == 10  # grouped by ratio
    assert page.get_by_label("Quality").count() == 0 or not page.get_by_label("Quality").is_visible()
    # One of them, generated: the image comes back at exactly that size.
    page.get_by_label("Size", exact=True).select_option("1280x720")
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page)
    assert [(s["nw"], s["nh"]) for s in natural_and_rendered(page)] == [(1280, 720)]
    look(page, "journey-playground-vip")

    # Usage lists the calls (the curl run too) and the balance fell by exactly their cost.
    with httpx.Client(base_url=console_gw.gw.v1, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        records = api.get("/account/usage", params={"limit": 100}).json()["data"]
        available = api.get("/account/balance").json()["available_micros"]
    ok = [r for r in records if r["token_id"] == int(token_id) and r["status"] == 200]
    # the quick start's curl, the generation, its curl twin, the edit and the streamed
    # generation (refusals cost nothing)
    assert sorted(r["endpoint"] for r in ok) == ["edits"] + ["generations"] * 4, ok
    for cost in costs:  # what the playground showed is what the usage record says
        assert cost in [r["cost_micros"] for r in ok], (cost, ok)
    visit(page, "/console/usage", "journey-usage")
    table = page.get_by_role("table").inner_text()
    assert table.count("journey key") >= 5, table
    assert "edits" in table and "generations" in table
    visit(page, "/console/", "journey-home-after")
    spent = Decimal(sum(r["cost_micros"] for r in records)) / 1_000_000
    assert spent > 0
    assert home_balance(page) == balance_before - spent == Decimal(available) / 1_000_000

    # Revoke the key: it is refused, by the API (the same curl) and by the playground.
    visit(page, f"/console/tokens/{token_id}", "journey-token-before-revoke")
    page.get_by_role("button", name="Revoke this key").click()
    page.wait_for_load_state()
    assert re.search(r"revoked", page.inner_text("main"), re.I)
    ran = subprocess.run(["bash", "-c", snippet], cwd=workdir, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    refused = json.loads((workdir / "response.json").read_text())
    assert refused.get("error", {}).get("code") in ("invalid_api_key", "revoked_api_key"), refused
    # The playground no longer offers it.
    visit(page, "/console/playground", "journey-playground-revoked")
    assert page.locator("#pg-key option").filter(has_text="journey key").count() == 0


@pytest.fixture
def upstream() -> Iterator[tuple[str, str]]:
    """An OpenAI-style upstream (the project's simulator) that accepts one key."""
    key = "sk-upstream-" + secrets.token_hex(8)
    with run_asgi(create_upstream_app("openai", api_keys=[key])) as url:
        yield url + "/v1", key


def test_admin_adds_tests_and_disables_a_channel(
    admin_page: Any, console_gw: ConsoleGateway, upstream: tuple[str, str]
) -> None:
    base_url, key = upstream
    name = "journey-openai-" + secrets.token_hex(3)
    admin = admin_page
    visit(admin, "/console/admin/", "journey-admin-dashboard")

    # Top up the demo user, reached from the users list by the links' names; to the micro-dollar.
    user = console_gw.user.name
    before = api_balance(console_gw, user)
    admin.get_by_role("link", name="Users", exact=True).click()
    admin.get_by_role("link", name=user, exact=True).click()
    admin.get_by_label("Amount in USD").fill("7.250001")
    admin.get_by_label(re.compile("^Reason")).fill("browser top-up")
    admin.get_by_role("button", name="Apply").click()
    admin.wait_for_load_state()
    assert "is now" in admin.locator(".flash").inner_text()
    assert api_balance(console_gw, user) == before + 7_250_001
    assert "browser top-up" in admin.locator("#ledger").inner_text()
    look(admin, "journey-admin-topped-up")

    admin.get_by_role("link", name="Channels", exact=True).click()
    admin.wait_for_load_state()
    look(admin, "journey-admin-channels")
    admin.get_by_label("Name", exact=True).fill(name)
    admin.get_by_label("Type").select_option("openai")
    admin.get_by_role("checkbox", name="official-pure", exact=True).check()
    admin.get_by_label("API key").fill(key)
    admin.get_by_label("Base URL").fill(base_url)
    admin.get_by_role("button", name="Add channel").click()
    admin.wait_for_url(re.compile(rf"/console/admin/channels/{name}$"))
    assert "never shown again" in admin.locator(".flash").inner_text()
    assert key not in admin.content(), "the channel's key is shown back"
    visit(admin, f"/console/admin/channels/{name}", "journey-admin-channel")
    assert key not in admin.content(), "the channel's key is shown back"

    # Test: the simulator accepts only this key, so a pass proves the key was kept and used.
    admin.get_by_role("button", name=f"Test {name}", exact=True).click()
    admin.wait_for_load_state()
    result = admin.locator("#test-result")
    assert re.search(r"Test passed", result.inner_text()), result.inner_text()
    look(admin, "journey-admin-channel-tested")

    # Disable with a reason; the list and the admin API agree.
    admin.get_by_label(re.compile(r"^Reason")).fill("journey: done testing")
    admin.get_by_role("button", name=f"Disable {name}", exact=True).click()
    admin.wait_for_load_state()
    assert re.search(r"disabled", admin.inner_text("main"), re.I)
    assert "disabled" in admin.locator(".state").first.inner_text()
    assert "journey: done testing" in admin.inner_text("main")
    assert admin.get_by_role("button", name=f"Enable {name}", exact=True).is_visible()
    look(admin, "journey-admin-channel-disabled")
    with console_gw.admin_api() as api:
        channels = api.get("/admin/channels").json()["data"]
    mine = [c for c in channels if c["name"] == name]
    assert mine and mine[0]["enabled"] is False, mine
    assert mine[0]["health"]["disabled_reason"] == "journey: done testing", mine
    visit(admin, "/console/admin/channels", "journey-admin-channels-after")
    row = admin.locator("tr", has=admin.get_by_role("link", name=name, exact=True))
    assert re.search(r"disabled", row.inner_text(), re.I), row.inner_text()
