"""/metrics, /readyz and JSON logs against the real gateway.

The rig: Sora2Official's pool ``official-mixed`` has two simulator channels, ``first``
(priority 10) and ``second``; a fault on ``first`` makes a call fail over to ``second``.
After a known mix of calls the scrape must show exactly these counts, by label value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagerelay_sim.server import create_upstream_app
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

ADMIN = "observe-admin-token"
SCRAPER = "observe-scrape-token"
KEYS = {"FIRST_KEY": "sk-first-0a1b2c3d4e5f6a7b8c9d", "SECOND_KEY": "sk-second-1a2b3c4d5e6f7a8b9c0d"}
GROUP = "Sora2Official"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Rig:
    gw: Gateway
    sims: dict[str, str]

    def call(self, **fields: Any) -> httpx.Response:
        body = {"model": "gpt-image-2", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low", **fields}
        return httpx.post(
            self.gw.v1 + "/images/generations",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {self.gw.tokens[GROUP]}"},
        )

    def scrape(self, token: str = SCRAPER) -> Samples:
        r = httpx.get(self.gw.base_url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def channels(first: str, second: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "first",
            "type": "openai",
            "base_url": first + "/v1",
            "api_key_env": "FIRST_KEY",
            "pools": ["official-mixed"],
            "priority": 10,
        },
        {
            "name": "second",
            "type": "openai",
            "base_url": second + "/v1",
            "api_key_env": "SECOND_KEY",
            "pools": ["official-mixed"],
        },
    ]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("observe")
    with (
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["FIRST_KEY"]])) as first,
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["SECOND_KEY"]])) as second,
    ):
        catalog = write_catalog(tmp / "catalog.yaml", channels(first, second))
        env = {
            **KEYS,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_METRICS_TOKEN": SCRAPER,
            "IMAGERELAY_LOG_FORMAT": "json",
        }
        data = tmp / "data"
        data.mkdir()
        with run_gateway(data, extra_env=env) as gw:
            yield Rig(gw, {"first": first, "second": second})


def test_metrics_after_a_known_mix_of_calls(rig: Rig) -> None:
    ok = [rig.call() for _ in range(2)]
    assert [r.status_code for r in ok] == [200, 200]
    invalid = rig.call(quality="ultra")
    assert invalid.status_code == 400
    unknown = rig.call(model="no-such-model-" + "x" * 40)  # must not become a label value
    assert unknown.status_code == 404
    httpx.post(rig.sims["first"] + "/_sim/faults", json={"type": "server_error", "count": 1}).raise_for_status()
    failed_over = rig.call()
    assert failed_over.status_code == 200

    m = rig.scrape()
    call = {"group": GROUP, "model": "gpt-image-2", "route": "official-mixed", "endpoint": "generations"}
    assert value(m, "imagerelay_calls_total", **call, status="200") == 3
    assert value(m, "imagerelay_calls_total", **call, status="400") == 1
    assert (
        value(
            m,
            "imagerelay_calls_total",
            group=GROUP,
            model="unknown",
            route="none",
            endpoint="generations",
            status="404",
        )
        == 1
    )
    assert not any("no-such-model" in v for _, labels in m for _, v in labels)

    assert value(m, "imagerelay_upstream_attempts_total", channel="first", outcome="ok") == 2
    assert value(m, "imagerelay_upstream_attempts_total", channel="first", outcome="server") == 1
    assert value(m, "imagerelay_upstream_attempts_total", channel="second", outcome="ok") == 1
    assert value(m, "imagerelay_upstream_failures_total", channel="first", kind="server") == 1
    assert value(m, "imagerelay_upstream_failures_total", channel="second", kind="server") == 0

    route = {"group": GROUP, "route": "official-mixed", "endpoint": "generations"}
    assert value(m, "imagerelay_call_duration_seconds_count", **route) == 4
    assert value(m, "imagerelay_call_duration_seconds_bucket", **route, le="+Inf") == 4
    assert value(m, "imagerelay_call_duration_seconds_bucket", **route, le="60.0") == 4
    assert value(m, "imagerelay_upstream_duration_seconds_count", channel="first") == 2
    assert value(m, "imagerelay_upstream_duration_seconds_count", channel="second") == 1

    gen = {"method": "POST", "path": "/v1/images/generations"}
    assert value(m, "imagerelay_http_requests_total", **gen, status="200") == 3
    assert value(m, "imagerelay_http_requests_total", **gen, status="400") == 1
    assert value(m, "imagerelay_http_requests_total", **gen, status="404") == 1
    assert value(m, "imagerelay_http_request_duration_seconds_count", path="/v1/images/generations") == 5
    assert value(m, "imagerelay_http_requests_in_flight") == 1  # the scrape itself

    charged = backend.query(rig.gw.data_dir, "select coalesce(sum(cost_micros), 0) from usage_records")[0][0]
    assert charged > 0
    assert value(m, "imagerelay_charged_usd_micros_total", group=GROUP, route="official-mixed") == charged

    assert value(m, "imagerelay_open_holds") == 0 and value(m, "imagerelay_held_usd_micros") == 0
    assert value(m, "imagerelay_jobs", status="queued") == 0
    assert value(m, "imagerelay_job_oldest_queued_age_seconds") == 0
    assert value(m, "imagerelay_channel_up", channel="first") == 1
    assert value(m, "imagerelay_channel_cooldown_seconds", channel="second") == 0
    assert value(m, "imagerelay_channel_consecutive_failures", channel="first") == 1  # the last call failed it

    # JSON logs: the failover's channel warning carries that call's request id.
    lines = [json.loads(line) for line in rig.gw.log_text().splitlines() if line.startswith("{")]
    warning = [x for x in lines if x["logger"] == "imagerelay.upstreams" and "first" in x["message"]]
    assert [x["request_id"] for x in warning] == [failed_over.headers["x-request-id"]]
    assert warning[0]["level"] == "warning" and KEYS["FIRST_KEY"] not in warning[0]["message"]


def test_json_logs_have_one_shape(rig: Rig) -> None:
    """Every line written by logging is a JSON object (the CLI's banner is not logging)."""
    text = rig.gw.log_text()
    logged = [line for line in text.splitlines() if line.startswith("{")]
    assert any(json.loads(line)["logger"].startswith("uvicorn") for line in logged)
    for line in text.splitlines():
        assert not any(f" {level} " in line for level in ("INFO", "WARNING", "ERROR")), line
        if line.startswith("{"):
            assert set(json.loads(line)) >= {"ts", "level", "logger", "message", "request_id"}


def test_metrics_needs_its_token(rig: Rig) -> None:
    url = rig.gw.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    user = httpx.get(url, headers={"Authorization": f"Bearer {rig.gw.tokens[GROUP]}"})
    assert user.status_code == 401 and user.json()["error"]["code"] == "invalid_metrics_token"
    assert "imagerelay_calls_total" in httpx.get(url, headers={"Authorization": f"Bearer {SCRAPER}"}).text


def test_metrics_takes_the_admin_credential_without_a_metrics_token(gateway: Gateway) -> None:
    url = gateway.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    user = httpx.get(url, headers={"Authorization": f"Bearer {gateway.tokens['default']}"})
    assert user.status_code == 403


def test_unknown_paths_share_one_label(rig: Rig) -> None:
    """A caller requesting made-up paths must not mint a series per path."""
    for i in range(3):
        assert httpx.get(rig.gw.base_url + f"/no-such-path-{i}").status_code == 404
    text = httpx.get(rig.gw.base_url + "/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}).text
    assert "no-such-path" not in text
    assert value(parse(text), "imagerelay_http_requests_total", method="GET", path="other", status="404") >= 3


def test_readyz_ready(rig: Rig) -> None:
    r = httpx.get(rig.gw.base_url + "/readyz")
    assert r.status_code == 200
    # The PostgreSQL pass gives every gateway Redis too, and the probe checks what is configured.
    redis = {"redis": "ok"} if backend.on_postgres() else {}
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "catalog": "ok", **redis}}


def test_readyz_reports_redis_down(tmp_path: Path) -> None:
    """Calls fail open when Redis is down, but the probe says so (an operator should know)."""
    env = {"IMAGERELAY_REDIS_URL": "redis://127.0.0.1:1/0", "IMAGERELAY_METRICS_OPEN": "true"}
    with run_gateway(tmp_path, extra_env=env) as gw:
        r = httpx.get(gw.base_url + "/readyz", timeout=10)
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not ready" and body["checks"]["database"] == "ok"
        assert body["checks"]["redis"].startswith("error") and "127.0.0.1" not in r.text
        assert httpx.get(gw.base_url + "/healthz").status_code == 200
        assert httpx.get(gw.base_url + "/metrics").status_code == 200  # METRICS_OPEN


def test_workers_share_their_counts(tmp_path: Path) -> None:
    """With --workers 2 a scrape reaches either process; each must report the sum."""
    with run_gateway(tmp_path, extra_env={"IMAGERELAY_METRICS_OPEN": "true"}, extra_args=["--workers", "2"]) as gw:
        headers = {"Authorization": f"Bearer {gw.tokens['default']}"}
        for _ in range(8):
            r = httpx.post(
                gw.v1 + "/images/generations",
                json={"model": "gpt-image-2", "prompt": "a kite"},
                headers=headers,
                timeout=60,
            )
            assert r.status_code == 200
        labels = {
            "group": "default",
            "model": "gpt-image-2",
            "route": "legacy-standard",
            "endpoint": "generations",
            "status": "200",
        }
        for _ in range(6):  # fresh connections, so both workers answer some of them
            m = parse(httpx.get(gw.base_url + "/metrics", headers={"connection": "close"}).text)
            assert value(m, "imagerelay_calls_total", **labels) == 8
        assert (tmp_path / "metrics").is_dir()


def test_job_log_lines_carry_the_call_id(rig: Rig) -> None:
    """A job runs in a worker task, outside any request: its lines still name its call.
    (Runs last in this module: its calls would change the counts above.)"""
    httpx.post(rig.sims["first"] + "/_sim/faults", json={"type": "server_error", "count": 1}).raise_for_status()
    key = {"Authorization": f"Bearer {rig.gw.tokens[GROUP]}"}
    r = httpx.post(
        rig.gw.v1 + "/images/jobs",
        headers=key,
        timeout=30,
        json={
            "endpoint": "generations",
            "model": "gpt-image-2",
            "prompt": "a kite",
            "size": "1024x1024",
            "quality": "low",
        },
    )
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 30
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        job = httpx.get(rig.gw.v1 + f"/images/jobs/{job['id']}", headers=key).json()
    assert job["status"] == "succeeded"
    lines = [json.loads(line) for line in rig.gw.log_text().splitlines() if line.startswith("{")]
    warnings = [x for x in lines if x["logger"] == "imagerelay.upstreams"]
    assert warnings[-1]["request_id"] == r.headers["x-request-id"]
