"""Exact billing through the HTTP API, checked against the ledger (issue: accounts & billing)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import png_bytes
from tests.support import backend
from tests.support.gateway import Gateway, run_gateway

ADMIN = "admin-secret-for-tests"
PRICES = {
    "text": Decimal("5.00"),
    "cached_text": Decimal("1.25"),
    "image": Decimal("8.00"),
    "cached_image": Decimal("2.00"),
    "out": Decimal("30.00"),
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with run_gateway(tmp_path_factory.mktemp("billing"), extra_env={"IMAGERELAY_ADMIN_TOKEN": ADMIN}) as g:
        yield g


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args, "--data-dir", str(gw.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=backend.cli_env(gw.data_dir),
    )


def new_user(gw: Gateway, name: str, group: str, usd: str | None) -> str:
    token = cli(gw, "tokens", "create", "--user", name, "--group", group).stdout.strip()
    assert token.startswith("sk-")
    if usd is not None:
        r = httpx.post(
            f"{gw.base_url}/admin/users/{name}/balance",
            json={"amount_usd": usd, "reason": "test credit"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 200, r.text
    return token


def balance(gw: Gateway, token: str) -> int:
    r = httpx.get(gw.v1 + "/account/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    return int(r.json()["balance_micros"])


def usage_records(gw: Gateway, token: str, **params: Any) -> list[dict[str, Any]]:
    r = httpx.get(
        gw.v1 + "/account/usage", params={"limit": 500, **params}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def ledger(gw: Gateway, request_id: str) -> list[tuple[int, str]]:
    rows = backend.query(gw.data_dir, "select amount_micros, kind from ledger where request_id = ?", (request_id,))
    return [tuple(row) for row in rows]


def expected_usage_cost(usage: dict[str, Any], multiplier: Decimal) -> int:
    inp = usage["input_tokens_details"]
    cached = inp.get("cached_tokens_details") or {}
    text, image = inp["text_tokens"], inp["image_tokens"]
    ct, ci = cached.get("text_tokens", 0), cached.get("image_tokens", 0)
    exact = (
        (text - ct) * PRICES["text"]
        + ct * PRICES["cached_text"]
        + (image - ci) * PRICES["image"]
        + ci * PRICES["cached_image"]
        + usage["output_tokens_details"]["image_tokens"] * PRICES["out"]
    ) * multiplier
    return int(exact.quantize(Decimal(1), rounding="ROUND_HALF_UP"))


def test_per_call_billing_generation_and_edit(gw: Gateway) -> None:
    token = new_user(gw, "percall", "default", "1")
    client = openai.OpenAI(base_url=gw.v1, api_key=token, max_retries=0)
    before = balance(gw, token)
    res = client.images.with_raw_response.generate(model="gpt-image-2-vip", prompt="a cat", size="1280x720")
    rid = res.headers["x-request-id"]
    assert balance(gw, token) == before - 30_000
    assert ledger(gw, rid) == [(-30_000, "charge")]
    client.images.edit(model="gpt-image-2", prompt="red", image=("a.png", io.BytesIO(png_bytes()), "image/png"))
    assert balance(gw, token) == before - 60_000
    records = usage_records(gw, token)
    assert [r["cost_micros"] for r in records] == [30_000, 30_000]
    assert {r["endpoint"] for r in records} == {"generations", "edits"}
    assert records[-1]["request_id"] == rid and records[-1]["route"] == "legacy-size-enhanced"


@pytest.mark.parametrize(
    ("group", "multiplier"), [("Sora2Official", Decimal("1")), ("GPTImage2 Enterprise", Decimal("1.2"))]
)
def test_usage_billing_end_to_end(gw: Gateway, group: str, multiplier: Decimal) -> None:
    token = new_user(gw, f"usage-{group.replace(' ', '-')}", group, "20")
    client = openai.OpenAI(base_url=gw.v1, api_key=token, max_retries=0)
    before = balance(gw, token)
    gen = client.images.with_raw_response.generate(
        model="gpt-image-2", prompt="a bright red kite over the sea", size="1536x1024", quality="high", n=2
    )
    body = gen.parse()
    cost = expected_usage_cost(body.usage.model_dump(), multiplier)
    assert cost > 0
    assert balance(gw, token) == before - cost
    assert ledger(gw, gen.headers["x-request-id"]) == [(-cost, "charge")]
    edit = client.images.with_raw_response.edit(
        model="gpt-image-2",
        prompt="make it blue",
        quality="low",
        image=[
            ("a.png", io.BytesIO(png_bytes(1024, 1024)), "image/png"),
            ("b.png", io.BytesIO(png_bytes(512, 768)), "image/png"),
        ],
    )
    ebody = edit.parse()
    assert ebody.usage.input_tokens_details.image_tokens > 0
    ecost = expected_usage_cost(ebody.usage.model_dump(), multiplier)
    assert balance(gw, token) == before - cost - ecost
    record = next(r for r in usage_records(gw, token) if r["request_id"] == edit.headers["x-request-id"])
    assert record["cost_micros"] == ecost and record["billing_mode"] == "usage"
    assert record["price_basis"]["multiplier"] == str(multiplier)


def test_pricing_endpoint(gw: Gateway) -> None:
    r = httpx.get(gw.v1 + "/pricing", headers={"Authorization": f"Bearer {gw.tokens['GPTImage2 Enterprise']}"})
    data = r.json()["data"]
    assert data[0]["billing_mode"] == "usage" and data[0]["multiplier"] == "1.2"
    assert Decimal(data[0]["usd_per_million_tokens"]["image_output"]) == Decimal("36")
    r = httpx.get(gw.v1 + "/pricing", headers={"Authorization": f"Bearer {gw.tokens['default']}"})
    assert {d["model"]: d["price_per_call_usd"] for d in r.json()["data"]} == {
        "gpt-image-2": "0.03",
        "gpt-image-2-vip": "0.03",
    }


def test_race_200_calls_balance_for_50(gw: Gateway) -> None:
    token = new_user(gw, "racer", "default", "1.5")  # exactly 50 calls at $0.03

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        gw.v1 + "/images/generations",
                        json={"model": "gpt-image-2", "prompt": f"p{i}"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for i in range(200)
                )
            )

    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) <= 50
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    assert all(r.headers["x-should-retry"] == "false" for r in refused)
    assert balance(gw, token) == 1_500_000 - 30_000 * len(ok) >= 0
    assert len(usage_records(gw, token)) == 200
    audit = cli(gw, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_insufficient_quota_is_not_retried_by_sdk(gw: Gateway) -> None:
    token = new_user(gw, "broke", "Sora2Official", None)
    client = openai.OpenAI(base_url=gw.v1, api_key=token, max_retries=3)
    with pytest.raises(openai.RateLimitError) as info:
        client.images.generate(model="gpt-image-2", prompt="x")
    assert info.value.code == "insufficient_quota"
    # One HTTP call reached the gateway: the SDK honoured x-should-retry: false.
    assert len(usage_records(gw, token)) == 1


def test_idempotent_retry_is_byte_identical_and_charged_once(gw: Gateway) -> None:
    token = new_user(gw, "idem", "Sora2Official", "5")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "order-42"}
    body = {"model": "gpt-image-2", "prompt": "a green apple", "size": "1024x1024", "quality": "low"}
    before = balance(gw, token)
    first = httpx.post(gw.v1 + "/images/generations", json=body, headers=headers, timeout=60)
    second = httpx.post(gw.v1 + "/images/generations", json=body, headers=headers, timeout=60)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers.get("idempotent-replayed") == "true"
    charged = before - balance(gw, token)
    assert charged > 0 and len([r for r in usage_records(gw, token) if r["status"] == 200]) == 1
    other = httpx.post(gw.v1 + "/images/generations", json={**body, "prompt": "changed"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_idempotent_concurrent_retries_make_one_upstream_call(gw: Gateway) -> None:
    token = new_user(gw, "idem2", "Sora2Official", "5")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "concurrent-1"}
    body = {"model": "gpt-image-2", "prompt": "a big 4K poster", "size": "3840x2160", "quality": "low"}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(
                *(c.post(gw.v1 + "/images/generations", json=body, headers=headers) for _ in range(3))
            )

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.content for r in responses}) == 1
    assert len(usage_records(gw, token)) == 1


def test_token_limits(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.base_url}/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={
            "user": "limited",
            "group": "default",
            "name": "capped",
            "spend_cap_usd": "0.06",
            "allowed_models": ["gpt-image-2"],
            "rpm": 100,
            "concurrency": 5,
        },
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    httpx.post(
        f"{gw.base_url}/admin/users/limited/balance",
        json={"amount_usd": "10", "reason": "t"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    h = {"Authorization": f"Bearer {token}"}
    vip = httpx.post(
        gw.v1 + "/images/generations", json={"model": "gpt-image-2-vip", "prompt": "x", "size": "1280x1280"}, headers=h
    )
    assert vip.status_code == 403 and vip.json()["error"]["code"] == "model_not_allowed"
    for _ in range(2):
        assert (
            httpx.post(
                gw.v1 + "/images/generations", json={"model": "gpt-image-2", "prompt": "x"}, headers=h, timeout=60
            ).status_code
            == 200
        )
    capped = httpx.post(gw.v1 + "/images/generations", json={"model": "gpt-image-2", "prompt": "x"}, headers=h)
    assert capped.status_code == 429 and "spend cap" in capped.json()["error"]["message"]


def test_rpm_limit(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.base_url}/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={"user": "rpm", "group": "default", "rpm": 2},
    )
    token = r.json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    codes = [
        httpx.post(gw.v1 + "/images/generations", json={"model": "gpt-image-2", "prompt": "x"}, headers=h, timeout=60)
        for _ in range(3)
    ]
    assert codes[2].status_code == 429 and codes[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(codes[2].headers["retry-after"]) >= 1


def test_expired_token(gw: Gateway) -> None:
    r = httpx.post(
        f"{gw.base_url}/admin/tokens",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={"user": "old", "group": "default", "expires_at": 1000},
    )
    client = openai.OpenAI(base_url=gw.v1, api_key=r.json()["token"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(model="gpt-image-2", prompt="x")


def test_admin_reads_everyones_usage_owner_only_theirs(gw: Gateway) -> None:
    a = new_user(gw, "reader-a", "default", "1")
    b = new_user(gw, "reader-b", "default", "1")
    for t in (a, b):
        httpx.post(
            gw.v1 + "/images/generations",
            json={"model": "gpt-image-2", "prompt": "x"},
            headers={"Authorization": f"Bearer {t}"},
            timeout=60,
        )
    assert {r["user_id"] for r in usage_records(gw, a)} == {usage_records(gw, a)[0]["user_id"]}
    everyone = httpx.get(
        gw.base_url + "/admin/usage", params={"limit": 500}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert len({r["user_id"] for r in everyone.json()["data"]}) >= 2
    denied = httpx.get(gw.base_url + "/admin/usage", headers={"Authorization": f"Bearer {a}"})
    assert denied.status_code == 403
    page = httpx.get(
        gw.v1 + "/account/usage", params={"limit": 1, "status": 200}, headers={"Authorization": f"Bearer {a}"}
    ).json()
    assert len(page["data"]) == 1


def test_usage_by_request_id_finds_one_call_and_a_jobs_attempts(gw: Gateway) -> None:
    token = new_user(gw, "byrequest", "default", "1")
    h = {"Authorization": f"Bearer {token}"}
    calls = [
        httpx.post(
            gw.v1 + "/images/generations", json={"model": "gpt-image-2", "prompt": f"cat {i}"}, headers=h, timeout=60
        )
        for i in range(2)
    ]
    rid = calls[0].headers["x-request-id"]
    found = usage_records(gw, token, request_id=rid)
    assert [r["request_id"] for r in found] == [rid] and found[0]["cost_micros"] == 30_000
    job = httpx.post(
        gw.v1 + "/images/jobs", json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "dog"}, headers=h
    )
    assert job.status_code == 202, job.text
    for _ in range(300):
        if httpx.get(gw.v1 + "/images/jobs/" + job.json()["id"], headers=h).json()["status"] == "succeeded":
            break
        time.sleep(0.1)
    job_rid = job.headers["x-request-id"]
    assert [r["request_id"] for r in usage_records(gw, token, request_id=job_rid)] == [job_rid]
    # A prefix is no match, a LIKE wildcard matches nothing, and another user's call is invisible.
    assert usage_records(gw, token, request_id=rid[:-1]) == []
    assert usage_records(gw, token, request_id="req_%") == []
    other = new_user(gw, "byrequest2", "default", None)
    assert usage_records(gw, other, request_id=rid) == []
    bad = httpx.get(gw.v1 + "/account/usage", params={"request_id": "a\x00b"}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"


def test_bad_topups_rejected(gw: Gateway) -> None:
    new_user(gw, "topup", "default", None)
    h = {"Authorization": f"Bearer {ADMIN}"}
    for body in (
        {"amount_usd": 1.5, "reason": "x"},
        {"amount_usd": "1.0000001", "reason": "x"},
        {"amount_usd": "1", "reason": ""},
        {"amount_usd": "abc", "reason": "x"},
    ):
        r = httpx.post(f"{gw.base_url}/admin/users/topup/balance", json=body, headers=h)
        assert r.status_code == 400, body


def test_audit_passes_at_the_end(gw: Gateway) -> None:
    result = cli(gw, "audit")
    assert result.returncode == 0, result.stdout + result.stderr
    _ = Path  # keep import for type hints
