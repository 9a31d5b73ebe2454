"""Async jobs on the embedded defaults: submit, poll, result, webhooks, ownership, billing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from imagerelay.webhooks import parse_signature
from tests.conftest import png_bytes
from tests.support import backend
from tests.support.gateway import Gateway, run_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"IMAGERELAY_WEBHOOK_ALLOW_PRIVATE": "true", "IMAGERELAY_WEBHOOK_BACKOFF_S": "0.3"}
    with run_gateway(tmp_path_factory.mktemp("jobs"), extra_env=env) as g:
        yield g


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def poll(
    gw: Gateway,
    token: str,
    job_id: str,
    until: tuple[str, ...] = ("succeeded", "failed", "canceled"),
    timeout: float = 60,
    **params: Any,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers=auth(token), params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def ledger_for(gw: Gateway, prefix: str) -> list[int]:
    return [
        r[0]
        for r in backend.query(gw.data_dir, "select amount_micros from ledger where request_id like ?", (prefix + "%",))
    ]


def test_prefer_respond_async_generation(gw: Gateway) -> None:
    token = gw.tokens["Sora2Official"]
    started = time.monotonic()
    r = httpx.post(
        gw.v1 + "/images/generations",
        headers={**auth(token), "Prefer": "respond-async"},
        json={"model": "gpt-image-2", "prompt": "a red fox", "size": "1024x1024", "quality": "low"},
    )
    assert time.monotonic() - started < 1.0
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["object"] == "image.job"
    assert r.headers["location"].endswith(f"/v1/images/jobs/{job['id']}")
    done = poll(gw, token, job["id"])
    assert done["status"] == "succeeded"
    result = done["result"]
    assert result["usage"]["output_tokens"] > 0 and result["size"] == "1024x1024"
    url = result["data"][0]["url"]
    assert "b64_json" not in result["data"][0]
    img = Image.open(io.BytesIO(httpx.get(url).content))
    assert img.size == (1024, 1024)
    with_b64 = poll(gw, token, job["id"], include="b64_json")
    raw = base64.b64decode(with_b64["result"]["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(raw)).size == (1024, 1024)
    # Charged exactly once, under the job's request id.
    request_id = r.headers["x-request-id"]
    charges = ledger_for(gw, request_id)
    assert len(charges) == 1 and charges[0] < 0


def test_jobs_endpoint_edit_multipart(gw: Gateway) -> None:
    token = gw.tokens["default"]
    r = httpx.post(
        gw.v1 + "/images/jobs",
        headers=auth(token),
        data={"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"},
        files={"image": ("a.png", png_bytes(400, 300), "image/png")},
    )
    assert r.status_code == 202, r.text
    done = poll(gw, token, r.json()["id"])
    assert done["status"] == "succeeded" and done["endpoint"] == "edits"
    img = Image.open(io.BytesIO(httpx.get(done["result"]["data"][0]["url"]).content))
    assert img.size == (1280, 720)


def test_jobs_endpoint_json_generation_and_bad_endpoint(gw: Gateway) -> None:
    token = gw.tokens["default"]
    r = httpx.post(
        gw.v1 + "/images/jobs",
        headers=auth(token),
        json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "x", "response_format": "b64_json"},
    )
    assert r.status_code == 202
    done = poll(gw, token, r.json()["id"])
    assert done["result"]["data"][0]["b64_json"]
    bad = httpx.post(gw.v1 + "/images/jobs", headers=auth(token), json={"endpoint": "videos", "prompt": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "endpoint"
    invalid = httpx.post(
        gw.v1 + "/images/jobs",
        headers=auth(token),
        json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "x", "quality": "high"},
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "quality"


def test_other_users_get_404(gw: Gateway) -> None:
    r = httpx.post(
        gw.v1 + "/images/generations",
        headers={**auth(gw.tokens["default"]), "Prefer": "respond-async"},
        json={"model": "gpt-image-2", "prompt": "mine"},
    )
    job_id = r.json()["id"]
    other = httpx.post(f"{gw.base_url}/admin/tokens", json={})  # no admin token configured: refused
    assert other.status_code in (401, 403)
    # A different user's token (create through the CLI).
    import subprocess
    import sys

    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagerelay",
            "tokens",
            "create",
            "--user",
            "stranger",
            "--group",
            "default",
            "--data-dir",
            str(gw.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=backend.cli_env(gw.data_dir),
    ).stdout.strip()
    for method in ("GET", "DELETE"):
        resp = httpx.request(method, f"{gw.v1}/images/jobs/{job_id}", headers=auth(token))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gw.v1}/images/jobs/imgjob_nope", headers=auth(gw.tokens["default"])).status_code == 404


class _Receiver(BaseHTTPRequestHandler):
    calls: list[tuple[dict[str, str], bytes]] = []
    fail_first = 1

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).calls.append((dict(self.headers), body))
        status = 500 if len(type(self).calls) <= type(self).fail_first else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_webhook_signed_and_retried(gw: Gateway) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = gw.tokens["GPTImage2 Enterprise"]
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        r = httpx.post(
            gw.v1 + "/images/generations",
            headers={**auth(token), "Prefer": "respond-async"},
            json={"model": "gpt-image-2", "prompt": "a boat", "quality": "low", "webhook_url": hook},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while len(_Receiver.calls) < 2:
            assert time.monotonic() < deadline, _Receiver.calls
            time.sleep(0.1)
        secret = httpx.get(gw.v1 + "/account/webhook-secret", headers=auth(token)).json()["secret"]
        for headers, body in _Receiver.calls:
            ts, mac = parse_signature(headers["X-Imagerelay-Signature"])
            expected = hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(mac, expected)
            assert headers["X-Imagerelay-Job-Id"] == job_id
        import json

        delivered = json.loads(_Receiver.calls[-1][1])
        assert delivered["id"] == job_id and delivered["status"] == "succeeded"
        assert delivered["result"]["data"][0]["url"].startswith(gw.base_url)
        state = poll(gw, token, job_id)
        deadline = time.monotonic() + 10
        while state["webhook"]["state"] != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.1)
            state = poll(gw, token, job_id)
        assert state["webhook"]["attempts"] == 2
    finally:
        server.shutdown()


def test_webhook_ssrf_rules(gw: Gateway) -> None:
    token = gw.tokens["default"]
    for url in ("ftp://example.com/x", "http://user:pw@example.com/", "not a url"):
        r = httpx.post(
            gw.v1 + "/images/jobs",
            headers=auth(token),
            json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "x", "webhook_url": url},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", url


def test_webhook_private_address_refused_by_default() -> None:
    import asyncio

    from imagerelay.domain.ssrf import UnsafeUrl, resolve_target

    for url in ("http://127.0.0.1/x", "http://10.0.0.5/", "http://169.254.169.254/latest", "http://[::1]/"):
        with pytest.raises(UnsafeUrl):
            asyncio.run(resolve_target(url, allow_private=False))
    asyncio.run(resolve_target("http://127.0.0.1/x", allow_private=True))
