"""Admission pacing (IMAGERELAY_ADMISSION_CONCURRENCY): with one call admitted at a time,
many concurrent calls against a slow upstream all complete, other requests are served
while calls wait their turn, and a call whose deadline passes while it waits gets a
clean error, never a 500 or a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from imagerelay_sim.server import create_upstream_app
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

KEY = "sk-admission-sim"
GROUP = "default"  # routed to the legacy pool: the simulator below
CALLS = 40


@contextmanager
def _gateway(tmp: Path, sim: str, **env: str) -> Iterator[Gateway]:
    catalog = write_catalog(
        tmp / "catalog.yaml",
        [
            {
                "name": "legacy",
                "type": "openai-compatible",
                "base_url": sim + "/v1",
                "api_key_env": "ADMISSION_KEY",
                "pools": ["legacy", "legacy-vip"],
                "timeout_s": 60.0,
            },
        ],
    )
    data = tmp / "data"
    data.mkdir()
    with run_gateway(
        data,
        extra_env={
            "ADMISSION_KEY": KEY,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMISSION_CONCURRENCY": "1",
            **env,
        },
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with run_asgi(create_upstream_app("openai", api_keys=[KEY])) as url:
        # Every call waits upstream: the calls overlap, and the gate is contended.
        assert httpx.post(url + "/_sim/faults", json={"type": "latency", "latency_s": 1.0}).status_code in (200, 201)
        yield url


def _balance(gw: Gateway) -> tuple[int, int]:
    body = httpx.get(gw.v1 + "/account/balance", headers={"Authorization": f"Bearer {gw.tokens[GROUP]}"}).json()
    return int(body["balance_micros"]), int(body["held_micros"])


async def _burst(gw: Gateway, n: int) -> tuple[list[httpx.Response], list[int]]:
    """``n`` calls at once, and /healthz asked while they are in flight (its statuses)."""
    limits = httpx.Limits(max_connections=n + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        headers = {"Authorization": f"Bearer {gw.tokens[GROUP]}"}
        calls = [
            asyncio.create_task(
                client.post(
                    gw.v1 + "/images/generations", headers=headers, json={"model": "gpt-image-2", "prompt": "x"}
                )
            )
            for _ in range(n)
        ]
        health: list[int] = []
        while not all(c.done() for c in calls):
            health.append((await client.get(gw.base_url + "/healthz")).status_code)
            await asyncio.sleep(0.05)
        return [c.result() for c in calls], health


def test_paced_calls_all_complete_and_health_is_served(sim: str, tmp_path: Path) -> None:
    with _gateway(tmp_path, sim) as gw:
        before = _balance(gw)
        answers, health = asyncio.run(_burst(gw, CALLS))
        assert [r.status_code for r in answers] == [200] * CALLS, [r.text[:200] for r in answers]
        assert all(r.json()["data"][0]["b64_json"] for r in answers)
        # /healthz was answered (every time) while the calls were in flight.
        assert health and set(health) == {200}
        balance, held = _balance(gw)
        assert held == 0 and balance < before[0]


def test_deadline_while_waiting_for_admission_is_a_clean_error(sim: str, tmp_path: Path) -> None:
    # A 10 ms call deadline: with one call admitted at a time, most of the burst waits
    # past it for admission (503 server_busy); the first ones are admitted and time out
    # upstream (504). Which call gets which depends on timing; that none hangs, none is
    # a 500 and nothing is charged does not.
    with _gateway(tmp_path, sim, IMAGERELAY_CALL_DEADLINE_S="0.01") as gw:
        before = _balance(gw)
        answers, health = asyncio.run(_burst(gw, CALLS))
        for r in answers:
            assert r.status_code in (503, 504), r.text[:300]
            err = r.json()["error"]
            assert set(err) >= {"message", "type", "param", "code"}
            if r.status_code == 503:
                assert err["code"] == "server_busy" and r.headers["retry-after"] == "1"
        assert set(health) <= {200}
        assert _balance(gw) == before  # nothing charged, nothing left held
