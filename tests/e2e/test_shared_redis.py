"""Two real gateway processes sharing one Redis (and one database), as two hosts behind a
load balancer would: per-token limits hold across both combined, and a channel cooled
down in one is skipped by the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.services import delete_redis_prefix, fresh_redis_prefix, redis_url
from tests.support.upstreams import simulated_channels

ADMIN = "shared-redis-admin-token"
KEYS = {"LEGACY_KEY": "sk-legacy-shared-1", "AZURE_KEY": "az-shared-2", "OPENAI_A_KEY": "sk-openai-a-shared-3"}
SLOW_S = 6.0  # how long a held call stays in flight upstream
SMALL = {"model": "gpt-image-2", "prompt": "x"}


@dataclass
class Rig:
    a: Gateway
    b: Gateway
    sims: dict[str, str]

    def sim_requests(self, name: str) -> list[dict[str, Any]]:
        body = httpx.get(self.sims[name] + "/_sim/requests").json()
        return list(body["requests"] if isinstance(body, dict) else body)

    def fault(self, name: str, **rule: Any) -> None:
        assert httpx.post(self.sims[name] + "/_sim/faults", json=rule).status_code in (200, 201)

    def clear(self) -> None:
        for url in self.sims.values():
            httpx.delete(url + "/_sim/requests")
            httpx.delete(url + "/_sim/faults")

    def channel(self, gw: Gateway, name: str) -> dict[str, Any]:
        data = httpx.get(gw.base_url + "/admin/channels", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]
        return dict(next(c for c in data if c["name"] == name))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    url = redis_url()
    prefix = fresh_redis_prefix()
    tmp = tmp_path_factory.mktemp("shared-redis")
    with simulated_channels(KEYS) as (sims, channels):
        catalog = write_catalog(tmp / "catalog.yaml", channels)
        # Two hosts: own data directories, one database and one Redis between them.
        env = {
            **KEYS,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_DATABASE_URL": f"sqlite:///{tmp / 'shared.db'}",
            "IMAGERELAY_REDIS_URL": url,
            "IMAGERELAY_REDIS_PREFIX": prefix,
            "IMAGERELAY_BREAKER_COOLDOWN_S": "120",
            "IMAGERELAY_TOKEN_CACHE_TTL_S": "0",
        }
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        try:
            with run_gateway(tmp / "a", extra_env=env) as a, run_gateway(tmp / "b", extra_env=env) as b:
                yield Rig(a, b, sims)
        finally:
            delete_redis_prefix(prefix)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.clear()
    yield
    rig.clear()


def new_token(rig: Rig, user: str, **limits: int) -> str:
    h = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(rig.a.base_url + "/admin/tokens", headers=h, json={"user": user, "group": "default", **limits})
    assert r.status_code == 201, r.text
    token = str(r.json()["token"])
    r = httpx.post(
        f"{rig.a.base_url}/admin/users/{user}/balance", headers=h, json={"amount_usd": "10", "reason": "test credit"}
    )
    assert r.status_code == 200, r.text
    return token


async def _post_all(urls: list[str], token: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(url + "/images/generations", json=SMALL, headers={"Authorization": f"Bearer {token}"})
                    for url in urls
                )
            )
        )


def test_rpm_counts_calls_to_both_processes(rig: Rig) -> None:
    token = new_token(rig, "rpm-shared", rpm=5)
    responses = asyncio.run(_post_all([rig.a.v1, rig.b.v1] * 6, token))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 7, [r.status_code for r in responses]
    for r in refused:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "5 requests per minute" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
    assert len(rig.sim_requests("legacy")) == 5


def test_concurrency_limit_holds_across_processes(rig: Rig) -> None:
    token = new_token(rig, "conc-shared", concurrency=2)
    rig.fault("legacy", type="latency", latency_s=SLOW_S, count=2)

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        slow = asyncio.ensure_future(_post_all([rig.a.v1, rig.b.v1], token))
        # Upstream records a request on arrival, before its delay: both are admitted and in flight.
        deadline = time.monotonic() + SLOW_S
        while len(await asyncio.to_thread(rig.sim_requests, "legacy")) < 2:
            assert time.monotonic() < deadline and not slow.done(), "the held calls never reached upstream"
            await asyncio.sleep(0.05)
        probes = await _post_all([rig.a.v1, rig.b.v1], token)
        return await slow, probes

    held, probes = asyncio.run(scenario())
    assert [r.status_code for r in held] == [200, 200]
    assert [r.status_code for r in probes] == [429, 429]
    for r in probes:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "2 concurrent requests" in r.json()["error"]["message"]
    # Both slots came back: each process admits again.
    assert [r.status_code for r in asyncio.run(_post_all([rig.a.v1, rig.b.v1], token))] == [200, 200]


def test_channel_cooled_down_in_one_process_is_skipped_by_the_other(rig: Rig) -> None:
    official = {"Authorization": f"Bearer {rig.a.tokens['Sora2Official']}"}
    body = {"model": "gpt-image-2", "prompt": "x", "size": "1024x1024", "quality": "low"}
    rig.fault("azure-1", type="500", count=3)
    for _ in range(3):  # azure-1 is tried first (priority 10), fails, openai-a answers
        assert httpx.post(rig.a.v1 + "/images/generations", json=body, headers=official, timeout=60).status_code == 200
    assert len(rig.sim_requests("azure-1")) == 3
    assert rig.channel(rig.a, "azure-1")["health"]["consecutive_failures"] == 3

    deadline = time.monotonic() + 10
    while rig.channel(rig.b, "azure-1")["health"]["cooldown_remaining_s"] == 0:
        assert time.monotonic() < deadline, "process b never saw the cooldown"
        time.sleep(0.1)
    rig.clear()
    b_official = {"Authorization": f"Bearer {rig.b.tokens['Sora2Official']}"}
    for _ in range(3):
        assert (
            httpx.post(rig.b.v1 + "/images/generations", json=body, headers=b_official, timeout=60).status_code == 200
        )
    assert rig.sim_requests("azure-1") == []  # b skipped it without failing on it itself
    assert len(rig.sim_requests("openai-a")) == 3
    assert rig.channel(rig.b, "azure-1")["health"]["consecutive_failures"] == 0


def test_job_concurrency_limit_holds_across_processes(rig: Rig) -> None:
    """A concurrency-1 key's jobs, submitted to both processes (each runs job workers),
    go upstream one at a time: the job holds the key's shared slot while it runs."""
    token = new_token(rig, "conc-jobs-shared", concurrency=1)
    rig.fault("legacy", type="latency", latency_s=3.0, count=2)
    headers = {"Authorization": f"Bearer {token}"}
    ids = []
    for base in (rig.a.v1, rig.b.v1):
        r = httpx.post(base + "/images/jobs", headers=headers, json={"endpoint": "generations", **SMALL})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    deadline = time.monotonic() + 10
    while not rig.sim_requests("legacy"):
        assert time.monotonic() < deadline, "no job reached upstream"
        time.sleep(0.05)
    time.sleep(1.5)  # well inside the first call's 3 s upstream
    assert len(rig.sim_requests("legacy")) == 1, "a concurrency-1 key had two jobs upstream at once"
    deadline = time.monotonic() + 30
    for job_id in ids:
        while httpx.get(f"{rig.a.v1}/images/jobs/{job_id}", headers=headers).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the key's jobs did not both finish"
            time.sleep(0.1)
    assert len(rig.sim_requests("legacy")) == 2
