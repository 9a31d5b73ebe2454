"""The playground (issue 12, item 4) driven in Debian's chromium against the real gateway
(``serve --demo``: the simulator stands in for the paid upstreams, partial images included).

The page's script calls the public API with a key; these tests check what a user sees
(the form each route allows, images at natural size, partial images, the gateway's own
refusals, the cost) and that the code it shows really runs.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagerelay.domain import sizes
from imagerelay.errors import InvalidRequest
from tests.conftest import png_bytes
from tests.console.conftest import ConsoleGateway, sign_in

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ENTERPRISE = "test:GPTImage2 Enterprise"
DEFAULT = "test:default"
LONG = 60_000  # ms: a generous liveness bound for a simulated call on a busy machine


def open_playground(page: Any, gw: ConsoleGateway, key: str = ENTERPRISE, model: str = "gpt-image-2") -> None:
    sign_in(page, gw.user.name, gw.user.password)
    page.goto("/console/playground")
    page.get_by_label("API key").select_option(key)
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    page.get_by_label("Model", exact=True).select_option(model)
    expect(page.locator("#pg-form")).to_be_visible()


def request_id_shown(page: Any) -> str:
    expect(page.locator("#pg-cost")).to_have_attribute("data-cost-micros", re.compile(r"^\d+$"), timeout=LONG)
    match = re.search(r"request (req_[0-9a-f]+)", page.inner_text("#pg-cost"))
    assert match, page.inner_text("#pg-cost")
    return match.group(1)


def usage_record(gw: ConsoleGateway, request_id: str) -> dict[str, Any]:
    with gw.admin_api() as api:
        records = api.get("/admin/usage", params={"user": gw.user.name, "limit": 200}).json()["data"]
    found = [r for r in records if r["request_id"] == request_id]
    assert len(found) == 1, f"{request_id} not in the usage records"
    return found[0]


def shown_key(page: Any) -> str:
    # The snippet is redrawn once the key's models are in (GET /v1/models): wait for it.
    expect(page.locator("#pg-curl")).to_contain_text(re.compile(r"Bearer sk-"))
    match = re.search(r"Bearer (sk-[A-Za-z0-9_-]+)", page.inner_text("#pg-curl"))
    assert match
    return match.group(1)


def test_quality_high_on_enterprise_runs_as_a_job_and_shows_the_image_at_natural_size(
    page: Any, console_gw: ConsoleGateway, tmp_path: Path
) -> None:
    open_playground(page, console_gw)
    page.get_by_label("Prompt").fill("a lighthouse at dusk")
    page.get_by_label("Quality").select_option("high")
    page.get_by_label("Size", exact=True).select_option("1536x1024")
    page.get_by_role("button", name="Generate").click()

    image = page.locator("img.pg-image")
    expect(image).to_have_attribute("data-natural", "1536x1024", timeout=LONG)
    drawn = image.evaluate(
        "(img) => [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width,"
        " img.getBoundingClientRect().height]"
    )
    assert drawn == [1536, 1024, 1536, 1024]  # not scaled to fit: its frame scrolls instead
    expect(page.locator(".pg-dims")).to_have_text("1536 × 1024 px")

    rid = request_id_shown(page)
    record = usage_record(console_gw, rid)
    assert record["status"] == 200 and record["billing_mode"] == "usage" and record["group"] == "GPTImage2 Enterprise"
    assert int(page.locator("#pg-cost").get_attribute("data-cost-micros")) == record["cost_micros"] > 0
    assert f"${record['cost_usd'].rstrip('0')}" in page.inner_text("#pg-cost")
    # It went through the async jobs API (a proxy never sees a silent connection).
    jobs = httpx.get(console_gw.url("/v1/images/jobs"), headers={"Authorization": f"Bearer {shown_key(page)}"}).json()
    assert rid.replace("req_", "imgjob_", 1) in [j["id"] for j in jobs["data"]]

    with page.expect_download() as download:
        page.get_by_role("link", name="Download image 1").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"{rid}-1.png"
    assert Image.open(saved).size == (1536, 1024)


def test_each_route_gets_its_own_form(page: Any, console_gw: ConsoleGateway) -> None:
    open_playground(page, console_gw, key=DEFAULT, model="gpt-image-2")
    expect(page.locator("#pg-size-fixed")).to_be_visible()
    for control in ("Size", "Quality", "Background", "Output format", "Moderation"):
        expect(page.get_by_label(control, exact=True)).to_be_hidden()
    assert '"size"' not in page.inner_text("#pg-curl")

    page.get_by_label("Model", exact=True).select_option("gpt-image-2-vip")
    expect(page.get_by_label("Size", exact=True)).to_be_visible()
    expect(page.get_by_label("Quality")).to_be_hidden()
    expect(page.get_by_label("Partial images (streaming)")).to_be_hidden()
    options = page.locator("#pg-size option")
    expect(options).to_have_count(30)
    # Exactly the route's table as GET /v1/models/gpt-image-2-vip publishes it, grouped by ratio.
    published = httpx.get(
        console_gw.url("/v1/models/gpt-image-2-vip"),
        headers={"Authorization": f"Bearer {console_gw.gw.tokens['default']}"},
    ).json()
    table = published["imagerelay"]["size"]["table"]
    groups = page.locator("#pg-size optgroup").evaluate_all(
        "(gs) => gs.map((g) => [g.label, Array.from(g.querySelectorAll('option'), (o) => o.value)])"
    )
    assert groups == [[ratio, list(tiers.values())] for ratio, tiers in table.items()]
    labels = options.all_inner_texts()
    assert all(re.fullmatch(r"\d+:\d+ · [124]K · \d+ × \d+", label) for label in labels), labels

    page.get_by_label("API key").select_option(ENTERPRISE)
    expect(page.get_by_label("Quality")).to_be_visible()
    for control in ("Background", "Output format", "Moderation", "Partial images (streaming)", "Images (n)"):
        expect(page.get_by_label(control)).to_be_visible()
    sizes_offered = page.locator("#pg-size option").evaluate_all("(os) => os.map((o) => o.value)")
    assert sizes_offered[0] == "auto" and sizes_offered[-1] == "custom"
    assert all(sizes.is_official_size(*map(int, s.split("x"))) for s in sizes_offered[1:-1])


def python_message(size: str) -> str:
    with pytest.raises(InvalidRequest) as refused:
        sizes.check_official_size(size)
    return refused.value.message


def test_refusals_are_explained_inline(page: Any, console_gw: ConsoleGateway) -> None:
    open_playground(page, console_gw)
    page.get_by_label("Prompt").fill("a cat")
    page.get_by_label("Size", exact=True).select_option("custom")
    custom = page.get_by_label("Custom size (WIDTHxHEIGHT)")
    expect(custom).to_be_focused()
    custom.type("1000x1000")  # key by key, as a person types
    error = page.locator("#pg-size-error")
    expect(error).to_have_text(python_message("1000x1000"))
    expect(custom).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#pg-output")).to_be_hidden()  # nothing was sent, so nothing was billed
    custom.fill("4000x1000")
    expect(error).to_contain_text("the nearest valid size is 3840x1280")
    custom.fill("1008x1008")
    expect(error).to_be_hidden()

    # A refusal only the gateway knows: its own message, next to the field it names.
    page.get_by_label("Output format").select_option("png")
    page.get_by_label("Compression (0–100, JPEG and WebP)").fill("50")
    page.get_by_role("button", name="Generate").click()
    field_error = page.locator("#pg-output_compression-error")
    expect(field_error).to_contain_text("output_compression applies to jpeg and webp only", timeout=LONG)
    expect(page.get_by_role("alert")).to_contain_text("output_compression applies to jpeg and webp only")
    expect(page.get_by_label("Compression (0–100, JPEG and WebP)")).to_have_attribute("aria-invalid", "true")


def write_edit_inputs(folder: Path) -> tuple[Path, Path, Path]:
    first, second, mask = folder / "first.png", folder / "second.png", folder / "mask.png"
    first.write_bytes(png_bytes(512, 512, (200, 30, 30)))
    second.write_bytes(png_bytes(512, 512, (30, 30, 200)))
    mask.write_bytes(png_bytes(512, 512, (0, 0, 0, 0), mode="RGBA"))
    return first, second, mask


def test_edit_with_two_images_and_a_mask(page: Any, console_gw: ConsoleGateway, tmp_path: Path) -> None:
    first, second, mask = write_edit_inputs(tmp_path)
    open_playground(page, console_gw)
    page.get_by_label("Edit images").check()
    page.get_by_label("Images to edit").set_input_files([first, second])
    page.get_by_label(re.compile("^Mask")).set_input_files(mask)
    expect(page.locator("#pg-image-previews img")).to_have_count(2)
    expect(page.locator("#pg-mask-preview img")).to_have_count(1)
    expect(page.get_by_role("img", name="Preview of second.png")).to_be_visible()
    page.get_by_label("Prompt").fill("@second.png: paint both red")  # text, though curl -F would read a file
    page.get_by_label("Size", exact=True).select_option("1024x1024")
    curl = page.inner_text("#pg-curl")
    assert "/images/edits" in curl and "image[]=@first.png" in curl and "image[]=@second.png" in curl
    assert "mask=@mask.png" in curl
    page.get_by_role("button", name="Edit", exact=True).click()

    expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
    record = usage_record(console_gw, request_id_shown(page))
    assert record["endpoint"] == "edits" and record["status"] == 200
    assert record["usage"]["input_image_tokens"] > 0

    # The edit's curl, run where the three files are, works as shown.
    done = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads((tmp_path / "response.json").read_text())
    assert Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))).size == (1024, 1024)


def test_streaming_shows_partial_images_as_they_arrive(page: Any, console_gw: ConsoleGateway) -> None:
    open_playground(page, console_gw)
    page.get_by_label("Prompt").fill("a mountain lake")
    page.get_by_label("Size", exact=True).select_option("1024x1024")
    page.get_by_label("Partial images (streaming)").select_option("2")
    curl, python = page.inner_text("#pg-curl"), page.inner_text("#pg-python")
    assert '"stream":true' in curl and '"partial_images":2' in curl and " -N" in curl
    assert "stream=True" in python and "partial_images=2" in python
    # Record the order in which images enter the page: partials must come before the result.
    page.evaluate("""() => {
        window.__arrivals = [];
        new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach((n) => {
            if (n.querySelector) n.querySelectorAll('img.pg-partial, img.pg-image').forEach(
                (img) => window.__arrivals.push(img.className));
        }))).observe(document.getElementById('pg-output'), {childList: true, subtree: true});
    }""")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
    expect(page.get_by_role("img", name=re.compile(r"^Partial image \d$"))).to_have_count(2)
    assert page.evaluate("window.__arrivals") == ["pg-partial", "pg-partial", "pg-image"]
    record = usage_record(console_gw, request_id_shown(page))
    assert record["status"] == 200 and record["endpoint"] == "generations"


def test_a_streamed_edit_shows_its_partial_image(page: Any, console_gw: ConsoleGateway, tmp_path: Path) -> None:
    first, _, _ = write_edit_inputs(tmp_path)
    open_playground(page, console_gw)
    page.get_by_label("Edit images").check()
    page.get_by_label("Images to edit").set_input_files(first)
    page.get_by_label("Prompt").fill("make it blue")
    page.get_by_label("Size", exact=True).select_option("1024x1024")
    page.get_by_label("Partial images (streaming)").select_option("1")
    page.get_by_role("button", name="Edit", exact=True).click()
    expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
    expect(page.get_by_role("img", name="Partial image 1")).to_be_visible()
    record = usage_record(console_gw, request_id_shown(page))
    assert record["endpoint"] == "edits" and record["status"] == 200


def test_the_copied_curl_and_python_snippets_run(page: Any, console_gw: ConsoleGateway, tmp_path: Path) -> None:
    open_playground(page, console_gw, key=DEFAULT, model="gpt-image-2-vip")
    page.get_by_label("Prompt").fill('a red bicycle, it\'s "vintage" $HOME `date`')  # quoting must hold
    page.get_by_label("Size", exact=True).select_option("1280x720")
    page.get_by_role("button", name="Copy curl").click()
    expect(page.locator("#pg-copy-status")).to_have_text("Copied.")
    curl = page.evaluate("navigator.clipboard.readText()")
    assert curl == page.inner_text("#pg-curl") and '"size":"1280x720"' in curl

    done = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads((tmp_path / "response.json").read_text())
    assert Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))).size == (1280, 720)

    script = tmp_path / "snippet.py"
    script.write_text(page.inner_text("#pg-python"))
    ran = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert Image.open(tmp_path / "image-1.png").size == (1280, 720)


def test_a_key_created_in_this_tab_needs_no_paste(page: Any, console_gw: ConsoleGateway) -> None:
    sign_in(page, console_gw.user.name, console_gw.user.password)
    page.goto("/console/tokens/new")
    page.get_by_label("Name", exact=True).fill("playground-check")
    page.get_by_label("GPTImage2 Enterprise").check()
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text().strip()
    page.get_by_role("main").get_by_role("link", name="playground", exact=True).click()
    expect(page.locator("#pg-key-status")).to_contain_text("Using the key this browser kept")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    expect(page.get_by_label("Quality")).to_be_visible()  # the Enterprise route's form
    assert f"Bearer {key}" in page.inner_text("#pg-curl")
    selected = page.get_by_label("API key").evaluate("(s) => s.options[s.selectedIndex].textContent")
    assert selected.startswith("playground-check · GPTImage2 Enterprise")


def test_a_pasted_key_and_keyboard_only_use(page: Any, console_gw: ConsoleGateway) -> None:
    """A token whose key this browser never saw: paste it; then run a call with keys alone."""
    sign_in(page, console_gw.user.name, console_gw.user.password)
    page.goto("/console/playground")
    demo = page.locator("#pg-key option", has_text="demo-default").get_attribute("value")
    page.get_by_label("API key").select_option(demo)
    paste = page.get_by_label("This token's key (the server keeps only its hint)")
    expect(paste).to_be_focused()
    paste.fill("sk-not-a-real-key")
    paste.press("Enter")
    expect(page.locator("#pg-key-status")).to_contain_text("This key was refused")
    page.get_by_label("API key").select_option(demo)
    paste.fill(console_gw.gw.tokens["default"])
    paste.press("Enter")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    page.get_by_label("Model", exact=True).focus()
    page.keyboard.press("Tab")  # into the form: the call mode radios
    page.keyboard.press("Tab")
    expect(page.get_by_label("Prompt")).to_be_focused()
    page.keyboard.type("a green kite")
    page.keyboard.press("Tab")  # this route has no other control
    expect(page.get_by_role("button", name="Generate")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)


def test_playground_with_a_result_is_accessible(page: Any, console_gw: ConsoleGateway, axe: Any, shots: Any) -> None:
    open_playground(page, console_gw)
    page.get_by_label("Prompt").fill("a small boat")
    page.get_by_label("Size", exact=True).select_option("1024x1024")
    page.get_by_label("Partial images (streaming)").select_option("1")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
    request_id_shown(page)
    axe(page)
    shots(page, "playground-result")
    page.set_viewport_size({"width": 375, "height": 800})
    # A phone scrolls the image and the code inside their frames, never the page sideways.
    assert page.evaluate("() => document.documentElement.scrollWidth") == 375


def test_switching_model_clears_the_previous_result(page: Any, console_gw: ConsoleGateway) -> None:
    open_playground(page, console_gw, key=DEFAULT, model="gpt-image-2")
    page.get_by_label("Prompt").fill("a red kite")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("img.pg-image")).to_have_count(1, timeout=LONG)
    request_id_shown(page)
    expect(page.locator("#pg-output")).to_be_visible()

    page.get_by_label("Model", exact=True).select_option("gpt-image-2-vip")
    expect(page.locator("#pg-output")).to_be_hidden()
    expect(page.locator("img.pg-image")).to_have_count(0)
    expect(page.locator("#pg-cost")).to_have_text("")
    assert page.locator("#pg-cost").get_attribute("data-cost-micros") is None
    # The next call shows only its own result.
    page.get_by_label("Prompt").fill("a blue kite")
    page.get_by_label("Size", exact=True).select_option(index=0)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("img.pg-image")).to_have_count(1, timeout=LONG)
    request_id_shown(page)


# -- the session test key (HTTP level, through the signed-in browser's cookies) -----------------


def post_test_key(page: Any, body: dict[str, Any], csrf: str | None) -> Any:
    headers = {"Content-Type": "application/json"} | ({"X-CSRF-Token": csrf} if csrf is not None else {})
    return page.request.post("/console/playground/test-key", data=json.dumps(body), headers=headers)


def test_session_test_key_needs_the_session_and_its_csrf_token(page: Any, console_gw: ConsoleGateway) -> None:
    anonymous = post_test_key(page, {"group": "default"}, "x")
    assert anonymous.status == 401
    sign_in(page, console_gw.user.name, console_gw.user.password)
    page.goto("/console/playground")
    csrf = page.locator("#playground").get_attribute("data-csrf")
    assert post_test_key(page, {"group": "default"}, None).status == 403
    assert post_test_key(page, {"group": "default"}, "wrong").json()["error"]["code"] == "csrf_failed"
    unknown = post_test_key(page, {"group": "nope"}, csrf)
    assert unknown.status == 400 and unknown.json()["error"]["param"] == "group"

    made = post_test_key(page, {"group": "default"}, csrf)
    assert made.status == 201
    first = made.json()
    assert first["group"] == "default" and first["key"].startswith("sk-") and first["expires_at"] > 0
    v1 = console_gw.url("/v1/models")
    assert httpx.get(v1, headers={"Authorization": f"Bearer {first['key']}"}).status_code == 200
    second = post_test_key(page, {"group": "default"}, csrf).json()  # replaces the first one
    assert httpx.get(v1, headers={"Authorization": f"Bearer {first['key']}"}).status_code == 401
    assert httpx.get(v1, headers={"Authorization": f"Bearer {second['key']}"}).status_code == 200

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile("/console/signin"))
    assert httpx.get(v1, headers={"Authorization": f"Bearer {second['key']}"}).status_code == 401
    demo_key = console_gw.gw.tokens["default"]  # the user's own tokens are untouched
    assert httpx.get(v1, headers={"Authorization": f"Bearer {demo_key}"}).status_code == 200


def test_a_password_change_ends_every_sessions_test_keys(page: Any, console_gw: ConsoleGateway) -> None:
    """The change signs every other session out; their test keys must stop with them."""
    password = "a-long-enough-passphrase-2"
    page.goto("/console/signup")
    page.get_by_label("User name").fill("rotates")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password again").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_load_state()
    page.goto("/console/playground")
    csrf = page.locator("#playground").get_attribute("data-csrf")
    made = post_test_key(page, {"group": "default"}, csrf)
    assert made.status == 201
    key = made.json()["key"]
    v1 = console_gw.url("/v1/models")
    assert httpx.get(v1, headers={"Authorization": f"Bearer {key}"}).status_code == 200

    page.goto("/console/password")
    page.get_by_label("Current password").fill(password)
    page.get_by_label("New password", exact=True).fill(password + "-new")
    page.get_by_label("New password again").fill(password + "-new")
    page.get_by_role("button", name="Change password").click()
    page.wait_for_url(re.compile("/console/$"))
    assert httpx.get(v1, headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_session_test_key_only_in_the_users_groups(page: Any, console_gw: ConsoleGateway) -> None:
    page.goto("/console/signup")
    page.get_by_label("User name").fill("limited")
    page.get_by_label("Password", exact=True).fill("a-long-enough-passphrase-1")
    page.get_by_label("Password again").fill("a-long-enough-passphrase-1")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_load_state()
    with console_gw.admin_api() as api:
        assert api.patch("/admin/users/limited", json={"allowed_groups": ["default"]}).status_code == 200
    page.goto("/console/playground")
    offered = page.locator("#pg-key option").evaluate_all("(os) => os.map((o) => o.value)")
    assert offered == ["", "test:default"]
    csrf = page.locator("#playground").get_attribute("data-csrf")
    refused = post_test_key(page, {"group": "GPTImage2 Enterprise"}, csrf)
    assert refused.status == 403 and refused.json()["error"]["code"] == "group_not_allowed"


def test_a_tab_never_lends_one_accounts_test_key_to_another(page: Any, console_gw: ConsoleGateway) -> None:
    open_playground(page, console_gw, key=DEFAULT)
    first_key = shown_key(page)
    # Someone else signs in on the same tab without signing the first user out.
    page.goto("/console/signup")
    page.get_by_label("User name").fill("second")
    page.get_by_label("Password", exact=True).fill("another-long-passphrase-2")
    page.get_by_label("Password again").fill("another-long-passphrase-2")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_load_state()
    page.goto("/console/playground")
    page.get_by_label("API key").select_option(DEFAULT)
    expect(page.locator("#pg-key-status")).to_contain_text("Using a new session test key")
    second_key = shown_key(page)
    assert second_key != first_key
    with console_gw.admin_api() as api:
        owners = {
            t["user"]
            for t in api.get("/admin/tokens", params={"limit": 100}).json()["data"]
            if t["name"].startswith("playground session ") and t["status"] == "active"
        }
    assert {"demo", "second"} <= owners
