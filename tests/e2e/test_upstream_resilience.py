"""Transient upstream errors never become an outage: retries, rate-based breakers and
half-open fallback, end to end against the real gateway and real simulator servers.

Pools: ``official-pure`` (GPTImage2 Enterprise) has one channel, ``solo``;
``official-mixed`` (Sora2Official) has two of equal priority, ``left`` and ``right``.
Faults are seeded, so a run is repeatable. The gateway runs with its default attempts
(``IMAGERELAY_MAX_ATTEMPTS`` = 8) and breaker; only the backoff is shortened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from imagerelay_sim.server import create_upstream_app
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

ADMIN = "resilience-admin-token"
KEYS = {"SOLO_KEY": "sk-solo-resilience-1", "LEFT_KEY": "sk-left-resilience-2", "RIGHT_KEY": "sk-right-resilience-3"}
ONE, TWO = "GPTImage2 Enterprise", "Sora2Official"
DEADLINE_S = 20.0


@dataclass
class Rig:
    gw: Gateway
    sims: dict[str, str]
    env: dict[str, str]

    def fault(self, name: str, **rule: Any) -> None:
        r = httpx.post(self.sims[name] + "/_sim/faults", json=rule)
        assert r.status_code in (200, 201), r.text

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, self.gw.base_url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def channel(self, name: str) -> dict[str, Any]:
        return next(c for c in self.admin("GET", "/admin/channels").json()["data"] if c["name"] == name)

    def reset(self) -> None:
        for name, url in self.sims.items():
            httpx.delete(url + "/_sim/faults")
            assert self.admin("POST", f"/admin/channels/{name}/enable").status_code == 200

    def records(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each call's usage record with its ledger charges, once all are written."""
        deadline = time.monotonic() + 15
        while True:
            marks = ",".join("?" * len(request_ids))
            rows = {
                r._mapping["request_id"]: dict(r._mapping)
                for r in backend.query(
                    self.gw.data_dir, f"select * from usage_records where request_id in ({marks})", request_ids
                )
            }  # noqa: S608
            for rid, rec in rows.items():
                rec["charges"] = [
                    c[0]
                    for c in backend.query(
                        self.gw.data_dir,
                        "select amount_micros from ledger where kind='charge' and request_id=?",
                        (rid,),
                    )
                ]
            if len(rows) == len(request_ids):
                return rows
            assert time.monotonic() < deadline, f"{len(request_ids) - len(rows)} usage records missing"
            time.sleep(0.1)

    def audit(self) -> None:
        audit = subprocess.run(
            [sys.executable, "-m", "imagerelay", "audit", "--data-dir", str(self.gw.data_dir)],
            capture_output=True,
            text=True,
            env=backend.cli_env(self.gw.data_dir, self.env),
            timeout=60,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("resilience")
    with (
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["SOLO_KEY"]])) as solo,
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["LEFT_KEY"]])) as left,
        run_asgi(create_upstream_app("openai", api_keys=[KEYS["RIGHT_KEY"]])) as right,
    ):
        catalog = write_catalog(
            tmp / "catalog.yaml",
            [
                {
                    "name": "solo",
                    "type": "openai",
                    "base_url": solo + "/v1",
                    "api_key_env": "SOLO_KEY",
                    "pools": ["official-pure"],
                },
                {
                    "name": "left",
                    "type": "openai",
                    "base_url": left + "/v1",
                    "api_key_env": "LEFT_KEY",
                    "pools": ["official-mixed"],
                },
                {
                    "name": "right",
                    "type": "openai",
                    "base_url": right + "/v1",
                    "api_key_env": "RIGHT_KEY",
                    "pools": ["official-mixed"],
                },
            ],
        )
        env = {
            **KEYS,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_RETRY_BACKOFF_S": "0.05",
            "IMAGERELAY_RETRY_BACKOFF_MAX_S": "0.4",
            "IMAGERELAY_CALL_DEADLINE_S": str(DEADLINE_S),
        }
        data = tmp / "data"
        data.mkdir()
        with run_gateway(data, extra_env=env) as gw:
            yield Rig(gw, {"solo": solo, "left": left, "right": right}, env)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.reset()
    yield
    rig.reset()


@dataclass
class Result:
    status: int
    request_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    elapsed_s: float


def call(rig: Rig, group: str) -> Result:
    body = {"model": "gpt-image-2", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}
    t0 = time.monotonic()
    r = httpx.post(
        rig.gw.v1 + "/images/generations",
        json=body,
        timeout=60,
        headers={"Authorization": f"Bearer {rig.gw.tokens[group]}"},
    )
    return Result(r.status_code, r.headers.get("x-request-id", ""), r.json(), dict(r.headers), time.monotonic() - t0)


def burst(rig: Rig, group: str, calls: int, concurrency: int = 8) -> list[Result]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: call(rig, group), range(calls)))


def assert_charged_once_or_nothing(rig: Rig, results: list[Result]) -> None:
    records = rig.records([r.request_id for r in results])
    for r in results:
        rec = records[r.request_id]
        if r.status == 200:
            assert rec["cost_micros"] > 0 and rec["charges"] == [-rec["cost_micros"]], rec
        else:
            assert rec["cost_micros"] == 0 and rec["charges"] == [], rec
    rig.audit()


def test_one_channel_with_transient_500s_and_429s_serves_at_least_98_percent(rig: Rig) -> None:
    """Before: only 32 of 60 succeeded, then the breaker cooled the only channel: 503s for 30 s.

    An attempt fails 44% of the time, so a call fails only when all 8 attempts do
    (0.44**8, about 1 in 700). Which draws of the seeded fault sequence a call gets
    depends on how the 8 callers interleave, so 60 calls (98% = 59) were at the mercy
    of a dense stretch of that sequence: 2 of 60 failed in one CI run. 200 calls measure
    the same 98% with room for a bad stretch (196)."""
    rig.fault("solo", type="server_error", rate=0.3, seed=11)
    rig.fault("solo", type="rate_limit", rate=0.2, retry_after=0, seed=12)
    results = burst(rig, ONE, 200)
    ok = sum(r.status == 200 for r in results)
    assert ok >= 196, [(r.status, r.body.get("error", {}).get("code")) for r in results if r.status != 200]
    assert_charged_once_or_nothing(rig, results)
    records = rig.records([r.request_id for r in results])
    assert max(rec["attempts"] for rec in records.values()) > 1  # retries did happen


def test_two_channels_with_connection_resets_serve_at_least_98_percent(rig: Rig) -> None:
    """Before: 28 of 30 calls failed with no_available_channel."""
    rig.fault("left", type="reset", rate=0.3, seed=21)
    rig.fault("right", type="reset", rate=0.3, seed=22)
    results = burst(rig, TWO, 60)
    ok = sum(r.status == 200 for r in results)
    assert ok >= 59, [(r.status, r.body.get("error", {}).get("code")) for r in results if r.status != 200]
    assert_charged_once_or_nothing(rig, results)


def test_one_channel_hard_down_and_one_healthy_serves_every_call_and_cools_the_bad_one(rig: Rig) -> None:
    rig.fault("left", type="server_error")
    results = burst(rig, TWO, 30)
    assert [r.status for r in results] == [200] * 30
    records = rig.records([r.request_id for r in results])
    assert {rec["channel"] for rec in records.values()} == {"right"}
    health = rig.channel("left")["health"]
    assert health["cooldown_remaining_s"] > 0, health
    # cooled down: the bad channel was tried a handful of times, not once per call
    assert health["failures"] < 15, health
    assert_charged_once_or_nothing(rig, results)


def test_every_channel_hard_down_is_a_clear_503_with_retry_after_within_the_deadline(rig: Rig) -> None:
    rig.fault("left", type="server_error")
    rig.fault("right", type="reset")
    results = burst(rig, TWO, 8)
    for r in results:
        assert r.status == 503, r.body
        assert r.body["error"]["code"] == "upstream_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert r.elapsed_s < DEADLINE_S
    records = rig.records([r.request_id for r in results])
    assert all(rec["attempts"] == 8 for rec in records.values()), records
    assert_charged_once_or_nothing(rig, results)


def test_breakers_never_black_out_a_pool_whose_channels_all_cool(rig: Rig) -> None:
    """Both channels trip their breakers; once they recover, the next call is served at
    once (half-open fallback) instead of a 503 for the whole cooldown."""
    rig.fault("left", type="server_error")
    rig.fault("right", type="server_error")
    assert call(rig, TWO).status in (502, 503)  # 502 before retries were added; the point is what follows
    assert rig.channel("left")["health"]["cooldown_remaining_s"] > 0
    assert rig.channel("right")["health"]["cooldown_remaining_s"] > 0
    for name in ("left", "right"):
        httpx.delete(rig.sims[name] + "/_sim/faults")
    r = call(rig, TWO)
    assert r.status == 200, r.body


def test_sporadic_errors_under_load_do_not_trip_the_breaker(rig: Rig) -> None:
    """35% of calls fail at random: three in a row happen, but the failure rate over the
    window stays under the breaker's, so the channel is never cooled down."""
    rig.fault("solo", type="server_error", rate=0.35, seed=5)
    results = burst(rig, ONE, 40, concurrency=4)
    assert sum(r.status == 200 for r in results) >= 39
    health = rig.channel("solo")["health"]
    assert health["cooldown_remaining_s"] == 0, health
    assert health["failures"] >= 3, health
    assert_charged_once_or_nothing(rig, results)


def test_a_route_may_be_stricter_about_attempts(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``max_attempts`` on a route in the catalog overrides IMAGERELAY_MAX_ATTEMPTS."""
    tmp = tmp_path_factory.mktemp("strict")
    catalog = write_catalog(
        tmp / "catalog.yaml",
        [
            {
                "name": "solo",
                "type": "openai",
                "base_url": rig.sims["solo"] + "/v1",
                "api_key_env": "SOLO_KEY",
                "pools": ["official-pure"],
            },
        ],
        **{"official-pure": {"max_attempts": 2}},
    )
    rig.fault("solo", type="server_error")
    data = tmp / "data"
    data.mkdir()
    with run_gateway(data, extra_env={**rig.env, "IMAGERELAY_CATALOG": str(catalog)}) as gw:
        r = httpx.post(
            gw.v1 + "/images/generations",
            timeout=60,
            headers={"Authorization": f"Bearer {gw.tokens[ONE]}"},
            json={"model": "gpt-image-2", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"},
        )
        assert r.status_code == 503, r.text
        deadline = time.monotonic() + 10
        while not (
            rows := backend.query(
                gw.data_dir, "select attempts from usage_records where request_id=?", (r.headers["x-request-id"],)
            )
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        row = rows[0]
        assert row[0] == 2
    assert json.loads(r.text)["error"]["code"] == "upstream_unavailable"
