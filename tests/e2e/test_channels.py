"""Real upstream channels: the gateway against simulator servers on loopback, one per channel.

Pools (as in docs/channels.md):
- default group -> `legacy` (openai-compatible reseller)
- Sora2Official -> `azure-1` (priority 10) then `openai-a` (priority 0)
- GPTImage2 Enterprise -> `openai-a` and `openai-b` (official keys only)
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from imagerelay_sim.server import create_upstream_app
from tests.conftest import png_bytes
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi
from tests.support.upstreams import simulated_channels

ADMIN = "channels-admin-token"
KEYS = {
    "LEGACY_KEY": "sk-legacy-secret-1",
    "AZURE_KEY": "az-secret-key-2",
    "OPENAI_A_KEY": "sk-openai-a-secret-3",
    "OPENAI_B_KEY": "sk-openai-b-secret-4",
}
COOLDOWN_S = 2.0


@dataclass
class Rig:
    gw: Gateway
    sims: dict[str, str]  # channel name -> simulator base URL

    def requests(self, name: str) -> list[dict[str, Any]]:
        r = httpx.get(self.sims[name] + "/_sim/requests")
        body = r.json()
        return list(body["requests"] if isinstance(body, dict) else body)

    def clear(self) -> None:
        for url in self.sims.values():
            httpx.delete(url + "/_sim/requests")
            httpx.delete(url + "/_sim/faults")

    def fault(self, name: str, **rule: Any) -> None:
        r = httpx.post(self.sims[name] + "/_sim/faults", json=rule)
        assert r.status_code in (200, 201), r.text

    def client(self, group: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.v1, api_key=self.gw.tokens[group], max_retries=0, **kw)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", {"Authorization": f"Bearer {ADMIN}"})
        return httpx.request(method, self.gw.base_url + path, **kw)

    def health(self, name: str) -> dict[str, Any]:
        channels = self.admin("GET", "/admin/channels").json()["data"]
        return next(c for c in channels if c["name"] == name)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("channels")
    with simulated_channels(KEYS) as (sims, channels):
        catalog = write_catalog(tmp / "catalog.yaml", channels)
        env = {
            **KEYS,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
            "IMAGERELAY_MAX_RETRY_AFTER_S": "1",
            "IMAGERELAY_RETRY_BACKOFF_S": "0.02",
            "IMAGERELAY_RETRY_BACKOFF_MAX_S": "0.1",
        }
        with run_gateway(tmp, extra_env=env) as gw:
            yield Rig(gw, sims)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    """Each test starts with no faults, no recorded requests and healthy channels."""
    rig.clear()
    for name in rig.sims:
        assert rig.admin("POST", f"/admin/channels/{name}/enable").status_code == 200
    yield
    rig.clear()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    return img


def one(rig: Rig, name: str) -> dict[str, Any]:
    reqs = rig.requests(name)
    assert len(reqs) == 1, reqs
    return reqs[0]


def header(req: dict[str, Any], name: str) -> str | None:
    headers = req["headers"]
    if isinstance(headers, dict):
        return next((v for k, v in headers.items() if k.lower() == name), None)
    return next((v for k, v in headers if k.lower() == name), None)


def test_openai_channel_exact_request(rig: Rig) -> None:
    res = rig.client("GPTImage2 Enterprise").images.generate(
        model="gpt-image-2", prompt="a red kite", size="1536x1024", quality="low", response_format="url"
    )
    assert res.data[0].url and res.data[0].url.startswith(rig.gw.base_url)
    reqs = rig.requests("openai-a") + rig.requests("openai-b")
    assert len(reqs) == 1
    req = reqs[0]
    assert req["method"] == "POST" and req["path"] == "/v1/images/generations"
    assert header(req, "authorization") in (f"Bearer {KEYS['OPENAI_A_KEY']}", f"Bearer {KEYS['OPENAI_B_KEY']}")
    assert req["json"] == {"model": "gpt-image-2", "prompt": "a red kite", "size": "1536x1024", "quality": "low"}


def test_azure_channel_exact_request_and_edit_parts(rig: Rig) -> None:
    c = rig.client("Sora2Official")
    c.images.generate(model="gpt-image-2", prompt="a boat", size="1024x1024", quality="medium", n=2)
    req = one(rig, "azure-1")
    assert req["path"] == "/openai/deployments/img2-deploy/images/generations"
    assert req["query_string"] == "api-version=2025-04-01-preview"
    assert header(req, "api-key") == KEYS["AZURE_KEY"] and header(req, "authorization") is None
    assert req["json"] == {"prompt": "a boat", "size": "1024x1024", "quality": "medium", "n": 2}  # no model
    httpx.delete(rig.sims["azure-1"] + "/_sim/requests")

    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(jpeg, "JPEG")
    c.images.edit(
        model="gpt-image-2",
        prompt="merge",
        image=[
            ("a.png", io.BytesIO(png_bytes(256, 256)), "image/png"),
            ("b.jpg", io.BytesIO(jpeg.getvalue()), "image/jpeg"),
        ],
    )
    req = one(rig, "azure-1")
    assert req["path"] == "/openai/deployments/img2-deploy/images/edits"
    parts = {(p["name"], p.get("content_type")) for p in req["parts"] if p.get("filename")}
    assert parts == {("image[]", "image/png"), ("image[]", "image/jpeg")}


def test_compatible_channel_for_legacy_routes(rig: Rig) -> None:
    res = rig.client("default").images.generate(model="gpt-image-2-vip", prompt="mug", size="2048x1152")
    assert decode(res.data[0].b64_json).size == (2048, 1152)
    req = one(rig, "legacy")
    assert req["path"] == "/v1/images/generations" and header(req, "authorization") == f"Bearer {KEYS['LEGACY_KEY']}"
    assert (
        req["json"] == {"model": "gpt-image-2-vip", "prompt": "mug", "size": "2048x1152"}
        or req["json"].get("size") == "2048x1152"
    )


RETRYABLE = ["500", "503", {"type": "429", "retry_after": 0.2}, "reset", "truncate", "invalid_json", "bad_base64"]


@pytest.mark.parametrize("fault", RETRYABLE, ids=lambda f: f if isinstance(f, str) else f["type"])
def test_failover_on_retryable_fault(rig: Rig, fault: Any) -> None:
    rule = {"type": fault, "count": 1} if isinstance(fault, str) else {**fault, "count": 1}
    rig.fault("azure-1", **rule)
    res = rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert decode(res.data[0].b64_json).size == (1024, 1024)
    assert len(rig.requests("azure-1")) == 1 and len(rig.requests("openai-a")) == 1
    # a clean call afterwards is served by azure again (resets its failure streak)
    rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="y", size="1024x1024", quality="low")
    assert len(rig.requests("azure-1")) == 2


def _warm(rig: Rig) -> None:
    """One clean call, so the gateway holds a pooled keep-alive connection to azure-1."""
    rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="w", size="1024x1024", quality="low")
    httpx.delete(rig.sims["azure-1"] + "/_sim/requests")


def test_a_dropped_connection_is_retried_once_on_the_same_channel(rig: Rig) -> None:
    # A clean close with no answer on a reused keep-alive connection is what an upstream
    # timing the connection out looks like: retried on a fresh connection, not failed over.
    _warm(rig)
    rig.fault("azure-1", type="drop", count=1)
    res = rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert decode(res.data[0].b64_json).size == (1024, 1024)
    assert len(rig.requests("azure-1")) == 2 and rig.requests("openai-a") == []
    assert rig.health("azure-1")["health"]["consecutive_failures"] == 0


def test_a_dropped_connection_twice_fails_over(rig: Rig) -> None:
    _warm(rig)
    rig.fault("azure-1", type="drop", count=2)
    res = rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert decode(res.data[0].b64_json).size == (1024, 1024)
    assert len(rig.requests("azure-1")) == 2 and len(rig.requests("openai-a")) == 1


@pytest.mark.parametrize("fault", ["data_url_prefix", "no_padding"])
def test_repairable_payloads_are_cleaned_not_failed_over(rig: Rig, fault: str) -> None:
    rig.fault("azure-1", type=fault, count=1)
    res = rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    b64 = res.data[0].b64_json
    assert not b64.startswith("data:") and len(b64) % 4 == 0
    decode(b64)
    assert rig.requests("openai-a") == []


def test_no_retry_on_moderation_block(rig: Rig) -> None:
    rig.fault("azure-1", type="moderation", count=1)
    with pytest.raises(openai.BadRequestError) as info:
        rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", quality="low")
    assert info.value.code == "moderation_blocked"
    assert rig.requests("openai-a") == []


def test_all_channels_failing_once_is_retried_and_served(rig: Rig) -> None:
    """Every channel of the pool fails once: the next round (after a backoff) serves the call
    (before retries, this was a 502)."""
    rig.fault("azure-1", type="500", count=1)
    rig.fault("openai-a", type="503", count=1)
    rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", quality="low")
    assert len(rig.requests("azure-1")) + len(rig.requests("openai-a")) == 3


def test_all_channels_failing_gives_one_clean_503(rig: Rig) -> None:
    rig.fault("azure-1", type="500")
    rig.fault("openai-a", type="503")
    with pytest.raises(openai.InternalServerError) as info:
        rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", quality="low")
    assert info.value.status_code == 503 and int(info.value.response.headers["retry-after"]) >= 1
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_unavailable"
    text = str(body)
    assert "127.0.0.1" not in text and "azure" not in text.lower() and "secret" not in text


def test_cooldown_and_recovery(rig: Rig) -> None:
    rig.fault("azure-1", type="500", count=3)
    c = rig.client("Sora2Official")
    for _ in range(3):
        c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert len(rig.requests("azure-1")) == 3
    health = rig.health("azure-1")["health"]
    assert health["cooldown_remaining_s"] > 0 and health["consecutive_failures"] == 3
    assert health["last_error"].startswith("server")
    c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert len(rig.requests("azure-1")) == 3  # cooled down: skipped
    time.sleep(COOLDOWN_S + 0.3)
    c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert len(rig.requests("azure-1")) == 4  # half-open probe succeeded
    assert rig.health("azure-1")["health"]["cooldown_remaining_s"] == 0


def test_disable_on_401_and_reenable(rig: Rig) -> None:
    rig.fault("openai-b", type="401")
    c = rig.client("GPTImage2 Enterprise")
    # Equal weights: the chance that 40 calls never pick openai-b is 2**-40.
    for _ in range(40):
        c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
        if rig.requests("openai-b"):
            break
    assert rig.requests("openai-b"), "openai-b was never tried"
    health = rig.health("openai-b")
    assert health["enabled"] is False and "401" in health["health"]["disabled_reason"]
    httpx.delete(rig.sims["openai-b"] + "/_sim/requests")
    for _ in range(4):
        c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
    assert rig.requests("openai-b") == []
    httpx.delete(rig.sims["openai-b"] + "/_sim/faults")
    assert rig.admin("POST", "/admin/channels/openai-b/enable").status_code == 200
    assert rig.health("openai-b")["enabled"] is True


def test_stream_relayed_event_by_event(rig: Rig) -> None:
    stream = rig.client("Sora2Official").images.generate(
        model="gpt-image-2", prompt="a fox", stream=True, partial_images=2, size="1024x1024", quality="low"
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert decode(events[-1].b64_json).size == (1024, 1024)
    assert one(rig, "azure-1")["json"]["stream"] is True


def test_stream_edit_relayed(rig: Rig) -> None:
    stream = rig.client("GPTImage2 Enterprise").images.edit(
        model="gpt-image-2",
        prompt="red",
        stream=True,
        partial_images=1,
        image=("a.png", io.BytesIO(png_bytes(512, 512)), "image/png"),
    )
    assert [e.type for e in stream] == ["image_edit.partial_image", "image_edit.completed"]


def test_stream_failover_before_first_byte(rig: Rig) -> None:
    rig.fault("azure-1", type="503", count=1)
    stream = rig.client("Sora2Official").images.generate(
        model="gpt-image-2", prompt="a fox", stream=True, partial_images=1, quality="low"
    )
    assert [e.type for e in stream][-1] == "image_generation.completed"
    assert len(rig.requests("openai-a")) == 1


def test_mid_stream_cut_is_an_sdk_error(rig: Rig) -> None:
    rig.fault("azure-1", type="stream_cut", count=1)
    stream = rig.client("Sora2Official").images.generate(
        model="gpt-image-2", prompt="a fox", stream=True, partial_images=2, quality="low"
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert rig.requests("openai-a") == []  # no failover after the first byte


def test_admin_add_channel_key_encrypted(rig: Rig) -> None:
    secret = "sk-runtime-added-secret-5"
    with run_asgi(create_upstream_app("openai", api_keys=[secret])) as extra:
        r = rig.admin(
            "POST",
            "/admin/channels",
            json={
                "name": "openai-c",
                "type": "openai",
                "base_url": extra + "/v1",
                "api_key": secret,
                "pools": ["official-pure"],
                "priority": 50,
            },
        )
        assert r.status_code == 201, r.text
        assert secret not in r.text and r.json()["has_key"] is True
        c = rig.client("GPTImage2 Enterprise")
        c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024", quality="low")
        assert len(httpx.get(extra + "/_sim/requests").json()["requests"]) == 1
        test = rig.admin("POST", "/admin/channels/openai-c/test")
        assert test.status_code == 200 and test.json()["ok"] is True
        listing = rig.admin("GET", "/admin/channels")
        assert secret not in listing.text
        stored = backend.query(rig.gw.data_dir, "select spec, key_ciphertext from channels where name='openai-c'")[0]
        assert secret not in stored[0] and secret not in stored[1]
        assert rig.admin("POST", "/admin/channels/openai-c/disable", json={"reason": "done"}).status_code == 200
    dup = rig.admin("POST", "/admin/channels", json={"name": "openai-c", "type": "openai", "pools": ["x"]})
    assert dup.status_code == 409
    assert rig.admin("GET", "/admin/channels", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_no_key_in_logs_or_answers(rig: Rig) -> None:
    rig.fault("azure-1", type="401", count=1)
    rig.client("Sora2Official").images.generate(model="gpt-image-2", prompt="x", quality="low")
    rig.admin("POST", "/admin/channels/azure-1/enable")
    log = rig.gw.log_text()
    for key in KEYS.values():
        assert key not in log
    assert "Traceback" not in log
    _ = Path


def test_azure_v1_form(rig: Rig) -> None:
    r = rig.admin(
        "POST",
        "/admin/channels",
        json={
            "name": "azure-v1",
            "type": "azure",
            "azure_form": "v1",
            "base_url": rig.sims["azure-1"],
            "api_key": KEYS["AZURE_KEY"],
            "model_map": {"gpt-image-2": "img2-deploy"},
            "pools": ["official-mixed"],
            "priority": 99,
        },
    )
    assert r.status_code == 201, r.text
    try:
        res = rig.client("Sora2Official").images.generate(
            model="gpt-image-2", prompt="x", size="1024x1024", quality="low", output_format="webp"
        )
        img = decode(res.data[0].b64_json)
        assert img.format == "WEBP"  # Azure cannot make webp: asked for png, transcoded
        req = one(rig, "azure-1")
        assert req["path"] == "/openai/v1/images/generations"
        assert req["json"]["model"] == "img2-deploy" and req["json"]["output_format"] == "png"
        assert header(req, "api-key") == KEYS["AZURE_KEY"]
    finally:
        assert rig.admin("POST", "/admin/channels/azure-v1/disable").status_code == 200


def test_channels_cli(rig: Rig) -> None:
    import subprocess
    import sys

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagerelay", "channels", *args, "--data-dir", str(rig.gw.data_dir)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=backend.cli_env(rig.gw.data_dir),
        )

    secret = "sk-cli-added-secret-6"
    added = cli(
        "add",
        "--name",
        "cli-chan",
        "--type",
        "openai-compatible",
        "--pool",
        "legacy",
        "--base-url",
        rig.sims["legacy"] + "/v1",
        "--key-stdin",
        stdin=secret + "\n",
    )
    assert added.returncode == 0, added.stderr
    listed = cli("list")
    assert "cli-chan" in listed.stdout and secret not in listed.stdout + listed.stderr + added.stdout
    assert cli("disable", "cli-chan").returncode == 0
    assert "no" in next(line for line in cli("list").stdout.splitlines() if "cli-chan" in line)
    assert cli("enable", "cli-chan").returncode == 0
    assert cli("disable", "nope").returncode == 2
    bad = cli("add", "--name", "bad", "--type", "azure", "--pool", "x")
    assert bad.returncode == 2 and "needs base_url" in bad.stdout + bad.stderr
    assert cli("disable", "cli-chan").returncode == 0
