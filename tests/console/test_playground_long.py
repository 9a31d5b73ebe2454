"""A slow call in the playground: progress with elapsed time while the job runs, and Cancel.

The Enterprise route is served by a simulated official upstream that takes its time (the
simulator's latency rule), so the job is visibly running when the test looks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.browser import ConsoleLog, chromium_path
from tests.console.conftest import ConsoleGateway, assert_clean, open_page, start_console_gateway
from tests.console.test_playground import ENTERPRISE, LONG, open_playground, shown_key, usage_record
from tests.support.catalogs import write_catalog
from tests.support.idle_proxy import idle_proxy
from tests.support.upstreams import simulated_channels

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

KEYS = {"LEGACY_KEY": "sk-legacy", "AZURE_KEY": "az-key", "OPENAI_A_KEY": "sk-openai-a"}


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleGateway, str]]:
    chromium_path()
    tmp: Path = tmp_path_factory.mktemp("playground-long")
    with simulated_channels(KEYS) as (urls, channels):
        catalog = write_catalog(tmp / "catalog.yaml", channels)
        env = {"IMAGERELAY_CATALOG": str(catalog), **KEYS}
        (tmp / "data").mkdir()
        with contextmanager(start_console_gateway)(tmp / "data", extra_env=env) as gw:
            yield gw, urls["openai-a"]


@pytest.fixture
def console_gw(slow: tuple[ConsoleGateway, str]) -> ConsoleGateway:
    return slow[0]  # the harness's ``page`` fixture opens its pages on this gateway


def test_a_running_job_shows_elapsed_time_and_can_be_canceled(page: Any, slow: tuple[ConsoleGateway, str]) -> None:
    gw, upstream = slow
    httpx.delete(upstream + "/_sim/faults")
    assert httpx.post(upstream + "/_sim/faults", json={"type": "latency", "latency_s": 12}).status_code in (200, 201)
    try:
        open_playground(page, gw, key=ENTERPRISE)
        page.get_by_label("Prompt").fill("a slow painting")
        page.get_by_label("Quality").select_option("high")
        page.get_by_role("button", name="Generate").click()
        progress = page.locator("#pg-progress")
        expect(progress).to_have_text(re.compile(r"^Running \(job imgjob_[0-9a-f]+\)… [2-9] s$"), timeout=20_000)
        job_id = re.search(r"imgjob_[0-9a-f]+", progress.inner_text()).group(0)  # type: ignore[union-attr]
        page.get_by_role("button", name="Cancel").click()
        expect(progress).to_have_text(re.compile(r"^Canceled after \d+ s\.$"), timeout=20_000)
        expect(page.get_by_role("button", name="Generate")).to_be_enabled()
        expect(page.locator("img.pg-image")).to_have_count(0)
        key = re.search(r"Bearer (sk-[A-Za-z0-9_-]+)", page.inner_text("#pg-curl")).group(1)  # type: ignore[union-attr]
        job = httpx.get(gw.url(f"/v1/images/jobs/{job_id}"), headers={"Authorization": f"Bearer {key}"}).json()
        assert job["status"] == "canceled"
        record = usage_record(gw, job_id.replace("imgjob_", "req_", 1))
        assert record["cost_micros"] == 0  # a canceled job costs nothing
    finally:
        httpx.delete(upstream + "/_sim/faults")


def test_a_call_longer_than_the_proxys_idle_timeout_completes(browser: Any, slow: tuple[ConsoleGateway, str]) -> None:
    """Behind a proxy that cuts any answer silent for 3 s (Cloudflare's 524, shortened), an
    8 s call still completes in the playground: it runs as a job, and no request waits."""
    gw, upstream = slow
    httpx.delete(upstream + "/_sim/faults")
    assert httpx.post(upstream + "/_sim/faults", json={"type": "latency", "latency_s": 8}).status_code in (200, 201)
    port = int(gw.base_url.rsplit(":", 1)[1])
    log = ConsoleLog()
    try:
        with idle_proxy(port, idle_s=3) as proxied:
            context, page = open_page(browser, proxied, log)
            try:
                open_playground(page, gw, key=ENTERPRISE)  # pages open on the proxy's address
                page.get_by_label("Prompt").fill("a very slow painting")
                page.get_by_label("Size", exact=True).select_option("1024x1024")
                page.get_by_role("button", name="Generate").click()
                expect(page.locator("img.pg-image")).to_have_attribute("data-natural", "1024x1024", timeout=LONG)
                expect(page.locator("#pg-progress")).to_have_text(re.compile(r"^Done in ([89]|\d\d) s\.$"))
                key = shown_key(page)
            finally:
                context.close()
            # The same call made synchronously through the same proxy is cut.
            cut = httpx.post(
                proxied + "/v1/images/generations",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "gpt-image-2", "prompt": "a very slow painting"},
                timeout=60,
            )
            assert cut.status_code == 524
    finally:
        httpx.delete(upstream + "/_sim/faults")
    assert_clean(log)
