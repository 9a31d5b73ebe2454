"""Slow and failing upstreams: nothing is charged for a failure, and long calls survive
a proxy that cuts silent connections (keep-alive and jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagerelay_sim.server import DEFAULT_MODELS, create_upstream_app
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, free_port, run_gateway
from tests.support.idle_proxy import idle_proxy
from tests.support.servers import run_asgi

KEY = "sk-slow-sim"
LATENCY_S = 5.0
PROXY_IDLE_S = 2.0


@dataclass
class Rig:
    gw: Gateway
    data_dir: Path
    env: dict[str, str]
    sims: dict[str, str]

    def fault(self, name: str, **rule: Any) -> None:
        assert httpx.post(self.sims[name] + "/_sim/faults", json=rule).status_code in (200, 201)

    def clear(self) -> None:
        for url in self.sims.values():
            httpx.delete(url + "/_sim/faults")
            httpx.delete(url + "/_sim/requests")

    def upstream_calls(self, name: str) -> int:
        return len(httpx.get(self.sims[name] + "/_sim/requests").json()["requests"])


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("slow")
    with (
        run_asgi(create_upstream_app("openai", api_keys=[KEY])) as a,
        run_asgi(create_upstream_app("openai", api_keys=[KEY])) as b,
        run_asgi(create_upstream_app("openai", api_keys=[KEY], models=(*DEFAULT_MODELS, "gpt-image-2-vip"))) as legacy,
    ):
        catalog = write_catalog(
            tmp / "catalog.yaml",
            [
                {
                    "name": "a",
                    "type": "openai",
                    "base_url": a + "/v1",
                    "api_key_env": "SLOW_KEY",
                    "pools": ["official-mixed", "official-pure"],
                },
                {
                    "name": "b",
                    "type": "openai",
                    "base_url": b + "/v1",
                    "api_key_env": "SLOW_KEY",
                    "pools": ["official-mixed", "official-pure"],
                },
                {
                    "name": "legacy",
                    "type": "openai-compatible",
                    "base_url": legacy + "/v1",
                    "api_key_env": "SLOW_KEY",
                    "pools": ["legacy", "legacy-vip"],
                    "timeout_s": 1.0,
                },
            ],
        )
        env = {
            "SLOW_KEY": KEY,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_JOB_WORKERS": "1",
            "IMAGERELAY_MAX_RETRY_AFTER_S": "0.2",
            "IMAGERELAY_RETRY_BACKOFF_S": "0.02",
            "IMAGERELAY_RETRY_BACKOFF_MAX_S": "0.1",
        }
        data = tmp / "data"
        data.mkdir()
        with run_gateway(data, extra_env=env) as gw:
            yield Rig(gw, data, env, {"a": a, "b": b, "legacy": legacy})


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.clear()
    yield
    rig.clear()


def balance(gw: Gateway, group: str) -> tuple[int, int]:
    body = httpx.get(gw.v1 + "/account/balance", headers={"Authorization": f"Bearer {gw.tokens[group]}"}).json()
    return int(body["balance_micros"]), int(body["held_micros"])


def records(rig: Rig, group: str) -> list[dict[str, Any]]:
    r = httpx.get(
        rig.gw.v1 + "/account/usage", params={"limit": 500}, headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"}
    )
    return list(r.json()["data"])


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def slow(rig: Rig, seconds: float = LATENCY_S) -> None:
    for name in ("a", "b"):
        rig.fault(name, type="latency", latency_s=seconds)


# -- failures cost nothing ---------------------------------------------------------------


def _assert_nothing_charged(
    rig: Rig, group: str, before: tuple[int, int], n_records: int, status: int
) -> dict[str, Any]:
    wait_for(lambda: balance(rig.gw, group) == before)
    recs = records(rig, group)
    assert len(recs) == n_records + 1
    newest = recs[0]
    assert newest["status"] == status and newest["cost_micros"] == 0 and newest["error_code"]
    return newest


def test_upstream_500_after_failover_exhausted(rig: Rig) -> None:
    group = "Sora2Official"
    before, n = balance(rig.gw, group), len(records(rig, group))
    rig.fault("a", type="500")
    rig.fault("b", type="500")
    client = openai.OpenAI(base_url=rig.gw.v1, api_key=rig.gw.tokens[group], max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.images.generate(model="gpt-image-2", prompt="x", quality="low")
    rec = _assert_nothing_charged(rig, group, before, n, 503)
    assert rec["attempts"] == 8  # both channels, then again, up to IMAGERELAY_MAX_ATTEMPTS


def test_timeout_costs_nothing(rig: Rig) -> None:
    group = "default"
    before, n = balance(rig.gw, group), len(records(rig, group))
    rig.fault("legacy", type="latency", latency_s=3)
    client = openai.OpenAI(base_url=rig.gw.v1, api_key=rig.gw.tokens[group], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="gpt-image-2", prompt="x")
    assert info.value.status_code == 504
    _assert_nothing_charged(rig, group, before, n, 504)


def test_moderation_block_costs_nothing(rig: Rig) -> None:
    group = "GPTImage2 Enterprise"
    before, n = balance(rig.gw, group), len(records(rig, group))
    rig.fault("a", type="moderation")
    rig.fault("b", type="moderation")
    client = openai.OpenAI(base_url=rig.gw.v1, api_key=rig.gw.tokens[group], max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="gpt-image-2", prompt="x", quality="low")
    rec = _assert_nothing_charged(rig, group, before, n, 400)
    assert rec["error_code"] == "moderation_blocked" and rec["attempts"] == 1


def test_client_disconnect_mid_call_costs_nothing(rig: Rig) -> None:
    group = "Sora2Official"
    before, n = balance(rig.gw, group), len(records(rig, group))
    slow(rig, 3.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            rig.gw.v1 + "/images/generations",
            json={"model": "gpt-image-2", "prompt": "x", "quality": "low"},
            headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"},
            timeout=1.0,
        )
    rec = _assert_nothing_charged(rig, group, before, n, 499)
    assert rec["error_code"] == "client_disconnected"


def test_client_disconnect_costs_nothing_under_another_asgi_server(rig: Rig, tmp_path: Path) -> None:
    """The app served by plain uvicorn (as by gunicorn's uvicorn worker), without the
    connection protocol of `imagerelay serve` that reports a lost client at once: the
    call is still cancelled, recorded as 499 and not charged."""
    port = free_port()
    env = {**os.environ, **backend.env_for(rig.data_dir), **rig.env, "IMAGERELAY_DATA_DIR": str(rig.data_dir)}
    log = tmp_path / "uvicorn.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "imagerelay.api.app:create_app", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, timeout=60)
        group = "Sora2Official"
        before, n = balance(rig.gw, group), len(records(rig, group))
        slow(rig, 3.0)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                base + "/v1/images/generations",
                json={"model": "gpt-image-2", "prompt": "x", "quality": "low"},
                headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"},
                timeout=1.0,
            )
        rec = _assert_nothing_charged(rig, group, before, n, 499)
        assert rec["error_code"] == "client_disconnected"
    finally:
        server.terminate()
        server.wait(timeout=20)


# -- long calls through a proxy that cuts silent connections -----------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_sync_call_fails_at_proxy_keepalive_and_job_succeed(rig: Rig) -> None:
    slow(rig)
    group = "Sora2Official"
    body = {"model": "gpt-image-2", "prompt": "slow", "size": "1024x1024", "quality": "high"}
    with idle_proxy(_port(rig.gw.base_url), PROXY_IDLE_S) as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key=rig.gw.tokens[group], max_retries=0)
        # 1. The plain synchronous call is cut by the proxy (524, like Cloudflare).
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(**body)
        assert info.value.status_code == 524
        # 2. The same call with keep-alive passes through, and the SDK parses it normally.
        res = client.images.generate(**body, extra_headers={"X-Imagerelay-Keepalive": "1"})
        assert res.data[0].b64_json and res.size == "1024x1024" and res.usage.output_tokens > 0
        # 3. A job submitted through the proxy succeeds by polling.
        sub = httpx.post(
            proxy + "/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {rig.gw.tokens[group]}", "Prefer": "respond-async"},
        )
        assert sub.status_code == 202
        job_id = sub.json()["id"]
        final: dict[str, Any] = {}

        def done() -> bool:
            final.update(
                httpx.get(
                    f"{proxy}/v1/images/jobs/{job_id}", headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"}
                ).json()
            )
            return final["status"] in ("succeeded", "failed")

        wait_for(done, timeout=60)
        assert final["status"] == "succeeded" and final["result"]["data"][0]["url"]


def test_keepalive_error_after_first_byte_is_an_error_body(rig: Rig) -> None:
    for name in ("a", "b"):
        rig.fault(name, type="latency", latency_s=2)
        rig.fault(name, type="500")
    r = httpx.post(
        rig.gw.v1 + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "x", "quality": "low"},
        headers={"Authorization": f"Bearer {rig.gw.tokens['Sora2Official']}", "X-Imagerelay-Keepalive": "1"},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.content.startswith(b" ")
    assert r.json()["error"]["code"] in ("upstream_unavailable", "upstream_overloaded")


def test_keepalive_validation_errors_keep_their_status(rig: Rig) -> None:
    r = httpx.post(
        rig.gw.v1 + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "x", "quality": "ultra"},
        headers={"Authorization": f"Bearer {rig.gw.tokens['Sora2Official']}", "X-Imagerelay-Keepalive": "1"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "quality"
    bad = httpx.post(
        rig.gw.v1 + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "x"},
        headers={"Authorization": f"Bearer {rig.gw.tokens['Sora2Official']}", "X-Imagerelay-Keepalive": "0"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Imagerelay-Keepalive"


def test_keepalive_header_that_is_not_a_finite_number_is_refused(rig: Rig) -> None:
    group = "Sora2Official"
    before, n = balance(rig.gw, group), len(records(rig, group))
    for raw in ("abc", "nan", "inf", ""):
        r = httpx.post(
            rig.gw.v1 + "/images/generations",
            json={"model": "gpt-image-2", "prompt": "x"},
            headers={"Authorization": f"Bearer {rig.gw.tokens[group]}", "X-Imagerelay-Keepalive": raw},
        )
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["param"] == "X-Imagerelay-Keepalive"
    # Refused at the door: no hold, no call, no usage record.
    assert balance(rig.gw, group) == before and len(records(rig, group)) == n
    assert rig.upstream_calls("a") + rig.upstream_calls("b") == 0


def test_keepalive_call_with_idempotency_key_is_replayed_and_charged_once(rig: Rig) -> None:
    group = "Sora2Official"
    slow(rig, 1.5)
    headers = {
        "Authorization": f"Bearer {rig.gw.tokens[group]}",
        "X-Imagerelay-Keepalive": "1",
        "Idempotency-Key": "keepalive-order-1",
    }
    body = {"model": "gpt-image-2", "prompt": "a kept-alive apple", "quality": "low"}
    first = httpx.post(rig.gw.v1 + "/images/generations", json=body, headers=headers, timeout=60)
    assert first.status_code == 200 and first.content.startswith(b" ")
    assert first.json()["data"][0]["b64_json"]
    retry = httpx.post(rig.gw.v1 + "/images/generations", json=body, headers=headers, timeout=60)
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    # The replay is the first answer without its keep-alive spaces, sent at once.
    assert retry.content == first.content.lstrip(b" ")
    assert rig.upstream_calls("a") + rig.upstream_calls("b") == 1
    assert len(_charges(rig.data_dir, first.headers["x-request-id"])) == 1
    assert _charges(rig.data_dir, retry.headers["x-request-id"]) == []


# -- jobs: cancel, restart ---------------------------------------------------------------


def _submit(rig: Rig, group: str, prompt: str) -> str:
    r = httpx.post(
        rig.gw.v1 + "/images/generations",
        json={"model": "gpt-image-2", "prompt": prompt, "size": "1024x1024", "quality": "low"},
        headers={"Authorization": f"Bearer {rig.gw.tokens[group]}", "Prefer": "respond-async"},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _job(gw: Gateway, group: str, job_id: str) -> dict[str, Any]:
    return dict(
        httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers={"Authorization": f"Bearer {gw.tokens[group]}"}).json()
    )


def _charges(data_dir: Path, request_id_prefix: str) -> list[int]:
    return [
        r[0]
        for r in backend.query(
            data_dir,
            "select amount_micros from ledger where kind='charge' and request_id like ?",
            (request_id_prefix + "%",),
        )
    ]


def _request_id(data_dir: Path, job_id: str) -> str:
    return str(backend.query(data_dir, "select request_id from jobs where id=?", (job_id,))[0][0])


def _records(data_dir: Path, job_id: str) -> list[tuple[int, str]]:
    """(status, error_code) of the usage records of a job's call."""
    return [
        (int(r[0]), str(r[1]))
        for r in backend.query(
            data_dir,
            "select status, error_code from usage_records where request_id like ?",
            (_request_id(data_dir, job_id) + "%",),
        )
    ]


def test_cancel_running_and_queued_jobs(rig: Rig) -> None:
    slow(rig)
    group = "GPTImage2 Enterprise"
    before = balance(rig.gw, group)
    running = _submit(rig, group, "one")
    queued = _submit(rig, group, "two")  # one worker: this one waits
    wait_for(lambda: _job(rig.gw, group, running)["status"] == "running")
    assert _job(rig.gw, group, queued)["status"] == "queued"
    assert balance(rig.gw, group)[1] > 0  # both holds in place
    for job_id in (queued, running):
        r = httpx.delete(
            f"{rig.gw.v1}/images/jobs/{job_id}", headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"}
        )
        assert r.status_code == 200 and r.json()["status"] == "canceled"
    wait_for(lambda: balance(rig.gw, group) == before)
    for job_id in (queued, running):
        assert _charges(rig.data_dir, _request_id(rig.data_dir, job_id)) == []
        # One record each, saying why, the running one too (its client did not leave).
        assert _records(rig.data_dir, job_id) == [(499, "canceled")], job_id
    again = httpx.delete(
        f"{rig.gw.v1}/images/jobs/{running}", headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"}
    )
    assert again.status_code == 409


def test_revoking_a_key_interrupts_its_running_job(rig: Rig) -> None:
    """A revoked key's running job is abandoned at once instead of finishing (and being
    charged) on a key its owner just took back: it ends failed with revoked_api_key, its
    hold goes back and nothing is charged. (Before, only its queued jobs ended.)"""
    slow(rig)
    group = "GPTImage2 Enterprise"
    owner = {"Authorization": f"Bearer {rig.gw.tokens[group]}"}
    created = httpx.post(rig.gw.v1 + "/account/tokens", headers=owner, json={"name": "revoked-mid-job", "group": group})
    assert created.status_code == 201, created.text
    key = created.json()
    before = balance(rig.gw, group)
    r = httpx.post(
        rig.gw.v1 + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "revoked mid-job", "size": "1024x1024", "quality": "low"},
        headers={"Authorization": f"Bearer {key['token']}", "Prefer": "respond-async"},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_for(lambda: _job(rig.gw, group, job_id)["status"] == "running")
    assert httpx.delete(f"{rig.gw.v1}/account/tokens/{key['id']}", headers=owner).status_code == 200
    wait_for(lambda: _job(rig.gw, group, job_id)["status"] not in ("queued", "running"))
    job = _job(rig.gw, group, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "revoked_api_key", job
    wait_for(lambda: balance(rig.gw, group) == before)
    assert _charges(rig.data_dir, _request_id(rig.data_dir, job_id)) == []
    assert _records(rig.data_dir, job_id) == [(401, "revoked_api_key")]


def test_failed_job_costs_nothing(rig: Rig) -> None:
    group = "GPTImage2 Enterprise"
    before = balance(rig.gw, group)
    rig.fault("a", type="500")
    rig.fault("b", type="500")
    job_id = _submit(rig, group, "doomed")
    wait_for(lambda: _job(rig.gw, group, job_id)["status"] in ("succeeded", "failed"))
    job = _job(rig.gw, group, job_id)
    assert job["status"] == "failed" and job["error"]["code"] in ("upstream_unavailable", "upstream_overloaded")
    assert set(job["error"]) == {"message", "type", "param", "code"} and "result" not in job
    wait_for(lambda: balance(rig.gw, group) == before)
    assert _charges(rig.data_dir, _request_id(rig.data_dir, job_id)) == []


def test_restart_with_jobs_queued_and_running(rig: Rig) -> None:
    slow(rig, 3.0)
    group = "Sora2Official"
    jobs = [_submit(rig, group, f"restart {i}") for i in range(3)]
    wait_for(lambda: _job(rig.gw, group, jobs[0])["status"] == "running")
    # Stop the gateway while one job runs and two are queued, then start it again.
    rig.gw.process.terminate()
    rig.gw.process.wait(30)
    with run_gateway(rig.data_dir, extra_env=rig.env) as gw2:
        rig.gw = gw2
        for job_id in jobs:
            wait_for(lambda job_id=job_id: _job(gw2, group, job_id)["status"] in ("succeeded", "failed"), timeout=90)
            assert _job(gw2, group, job_id)["status"] == "succeeded"
            assert len(_charges(rig.data_dir, _request_id(rig.data_dir, job_id))) == 1
        audit = subprocess.run(
            [sys.executable, "-m", "imagerelay", "audit", "--data-dir", str(rig.data_dir)],
            capture_output=True,
            text=True,
            env=backend.cli_env(rig.data_dir, rig.env),
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
