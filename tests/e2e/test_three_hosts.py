"""The three-host rehearsal (issue 16): three gateway hosts with their own data
directories behind nginx, sharing one PostgreSQL database, one Redis prefix, the S3
stand-in as image store and the settings that must match. Nothing about a call may
depend on which host it lands on, and no call may touch a host's own disk: the data
directories are read-only once the hosts serve (file permissions bind the gateways even
when the tests run as root), so a call that wrote there would fail.

The fleet is module-scoped and comes up once; the tests run in file order, and the one
that kills a host runs last.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagerelay.webhooks import parse_signature
from tests.conftest import png_bytes
from tests.support.catalogs import write_catalog
from tests.support.fleet import Fleet, binding_permissions, run_fleet, shared_settings
from tests.support.gateway import free_port
from tests.support.s3 import S3Server
from tests.support.services import (
    delete_redis_prefix,
    drop_postgres_database,
    fresh_postgres_database,
    fresh_redis_prefix,
    redis_url,
    require_program,
    sql_rows,
)
from tests.support.upstreams import simulated_channels

KEYS = {"LEGACY_KEY": "sk-legacy-fleet-1", "AZURE_KEY": "az-fleet-2", "OPENAI_A_KEY": "sk-openai-a-fleet-3"}
TOKEN_CACHE_TTL_S = 3.0
LEASE_S = 10.0  # the smallest instance lease the setting takes
PER_CALL = 30_000  # the default group's price per call, micro-dollars
SMALL = {"model": "gpt-image-2", "prompt": "x"}
OFFICIAL = {"model": "gpt-image-2", "prompt": "x", "size": "1024x1024", "quality": "low"}


@dataclass
class Rig:
    fleet: Fleet
    sims: dict[str, str]
    database_url: str
    s3: S3Server
    bucket: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fleet.env['IMAGERELAY_ADMIN_TOKEN']}"}

    @property
    def lb(self) -> str:
        return self.fleet.balancer.v1

    def host(self, i: int) -> str:
        return self.fleet.hosts[i].v1

    def sim_requests(self, name: str) -> list[dict[str, Any]]:
        return list(httpx.get(self.sims[name] + "/_sim/requests").json()["requests"])

    def fault(self, name: str, **rule: Any) -> None:
        assert httpx.post(self.sims[name] + "/_sim/faults", json=rule).status_code in (200, 201)

    def clear(self) -> None:
        for url in self.sims.values():
            httpx.delete(url + "/_sim/requests")
            httpx.delete(url + "/_sim/faults")

    def new_token(self, user: str, group: str = "default", usd: str = "10") -> tuple[str, int]:
        """A user with ``usd`` of credit and one token, made through the balancer."""
        r = httpx.post(
            self.fleet.balancer.base_url + "/admin/tokens", headers=self.admin, json={"user": user, "group": group}
        )
        assert r.status_code == 201, r.text
        r2 = httpx.post(
            f"{self.fleet.balancer.base_url}/admin/users/{user}/balance",
            headers=self.admin,
            json={"amount_usd": usd, "reason": "rehearsal credit"},
        )
        assert r2.status_code == 200, r2.text
        return str(r.json()["token"]), int(r.json()["id"])

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in sql_rows(self.database_url, sql, params)]

    def audit(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagerelay", "audit", "--database-url", self.database_url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.fleet.env, "IMAGERELAY_DATA_DIR": str(self.fleet.root)},
        )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Rig]:
    require_program("nginx", "/usr/sbin/nginx")
    bucket = s3_server.create_bucket()
    root = tmp_path_factory.mktemp("three-hosts")
    database_url, db_name = fresh_postgres_database()
    prefix = fresh_redis_prefix()
    try:
        with simulated_channels(KEYS, log_level="critical") as (sims, channels):
            catalog = write_catalog(root / "catalog.yaml", channels)
            port = free_port()
            env = {
                **KEYS,
                **shared_settings(database_url, redis_url(), prefix, f"http://127.0.0.1:{port}"),
                **s3_server.env(bucket, "fleet/"),
                "IMAGERELAY_CATALOG": str(catalog),
                "IMAGERELAY_TOKEN_CACHE_TTL_S": str(TOKEN_CACHE_TTL_S),
                "IMAGERELAY_INSTANCE_LEASE_S": str(LEASE_S),
                "IMAGERELAY_BREAKER_COOLDOWN_S": "120",
                "IMAGERELAY_JOB_WORKERS": "2",
                "IMAGERELAY_WEBHOOK_ALLOW_PRIVATE": "true",
            }  # the test's receiver is on loopback
            with run_fleet(root, env, balancer_port=port, read_only=True) as fleet:
                yield Rig(fleet, sims, database_url, s3_server, bucket)
    finally:
        delete_redis_prefix(prefix)
        drop_postgres_database(db_name)


@pytest.fixture(autouse=True)
def _clean(rig: Rig) -> Iterator[None]:
    rig.clear()
    yield
    rig.clear()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def balance(base_v1: str, token: str) -> tuple[int, int]:
    body = httpx.get(base_v1 + "/account/balance", headers=auth(token)).json()
    return int(body["balance_micros"]), int(body["held_micros"])


def wait_for(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Poll until ``predicate`` holds; returns how long it took (a liveness bound only)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)
    return time.monotonic() - start


async def _post_many(
    url: str, n: int, token: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        url + "/images/generations",
                        json={**body, "prompt": f"{body['prompt']} {i}"},
                        headers={**auth(token), **(headers or {})},
                    )
                    for i in range(n)
                )
            )
        )


def test_the_balancer_spreads_calls_over_every_host(rig: Rig) -> None:
    token, _ = rig.new_token("spread")
    served = []
    for _ in range(6):
        r = httpx.post(rig.lb + "/images/generations", json=SMALL, headers=auth(token), timeout=60)
        assert r.status_code == 200, r.text
        served.append(rig.fleet.served_by(r))
    assert set(served) == {0, 1, 2}, served
    # Separate machines: no host has another's data directory, and each has its own,
    # read-only for the gateway since it started (a write there fails, even as root).
    dirs = {gw.data_dir.resolve() for gw in rig.fleet.hosts}
    assert len(dirs) == 3
    for d in dirs:
        probe = subprocess.run(
            [*binding_permissions(), sys.executable, "-c", f"open({str(d / 'probe')!r}, 'w')"],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr


def test_a_new_user_s_first_tokens_made_on_every_host_at_once(rig: Rig) -> None:
    """An operator's script creating a new customer's keys through the balancer: the
    user is created once, whichever hosts race to create it, and no call is a 500."""

    async def create() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            rig.fleet.hosts[i % 3].base_url + "/admin/tokens",
                            headers=rig.admin,
                            json={"user": "fleet-newcomer", "group": "default", "name": f"key-{i}"},
                        )
                        for i in range(12)
                    )
                )
            )

    responses = asyncio.run(create())
    assert [r.status_code for r in responses] == [201] * 12, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["user"] for r in responses}) == 1
    assert rig.rows("SELECT count(*) FROM users WHERE name = ?", "fleet-newcomer") == [(1,)]


def test_balance_race_spread_over_all_hosts_never_overspends(rig: Rig) -> None:
    token, _ = rig.new_token("fleet-racer", usd="1.5")  # exactly 50 calls at $0.03
    responses = asyncio.run(_post_many(rig.lb, 150, token, SMALL))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # Every host took part in the race (each refused some calls), and the balance was spent
    # from more than one host at once. Not necessarily from all three: PostgreSQL movements
    # are batched (up to 16 per transaction, storage/pg_batches.py), so on a loaded machine
    # two hosts' batches can spend all 50 before the third host's first batch commits
    # (seen once in CI: {1, 2}).
    assert len({rig.fleet.served_by(r) for r in ok}) >= 2, "the balance was not spent from several hosts"
    assert {rig.fleet.served_by(r) for r in refused} == {0, 1, 2}, "the race did not reach every host"
    # Every call that was admitted succeeded, so the balance bought exactly 50, never more.
    assert len(ok) == 50, [r.status_code for r in responses]
    for r in refused:
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    assert balance(rig.lb, token) == (1_500_000 - PER_CALL * 50, 0)
    usage = httpx.get(rig.lb + "/account/usage", params={"limit": 500}, headers=auth(token)).json()["data"]
    assert len(usage) == 150
    assert sum(int(u["cost_micros"]) for u in usage) == PER_CALL * 50
    audit = rig.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_an_idempotency_key_works_across_hosts(rig: Rig) -> None:
    token, _ = rig.new_token("fleet-idem", group="Sora2Official")
    key = {"Idempotency-Key": "fleet-order-1"}
    before = balance(rig.lb, token)[0]
    first = httpx.post(rig.host(0) + "/images/generations", json=OFFICIAL, headers={**auth(token), **key}, timeout=60)
    assert first.status_code == 200, first.text
    for i in (1, 2):
        again = httpx.post(
            rig.host(i) + "/images/generations", json=OFFICIAL, headers={**auth(token), **key}, timeout=60
        )
        assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
        assert again.content == first.content
    conflict = httpx.post(
        rig.lb + "/images/generations", json={**OFFICIAL, "prompt": "other"}, headers={**auth(token), **key}, timeout=60
    )
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"

    # The same key sent to all three hosts at once, while the first call is upstream:
    # one upstream call, one charge, three identical answers.
    rig.clear()
    rig.fault("azure-1", type="latency", latency_s=2.0, count=1)
    key2 = {"Idempotency-Key": "fleet-order-2"}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(rig.host(i) + "/images/generations", json=OFFICIAL, headers={**auth(token), **key2})
                        for i in range(3)
                    )
                )
            )

    answers = asyncio.run(together())
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    assert len({r.content for r in answers}) == 1
    assert len(rig.sim_requests("azure-1")) + len(rig.sim_requests("openai-a")) == 1
    usage = httpx.get(rig.lb + "/account/usage", params={"limit": 50}, headers=auth(token)).json()["data"]
    assert len([u for u in usage if u["status"] == 200]) == 2  # one per key
    charged = before - balance(rig.lb, token)[0]
    assert charged == sum(int(u["cost_micros"]) for u in usage) > 0


def test_a_token_revoked_through_one_host_is_refused_by_all_within_the_cache_ttl(rig: Rig) -> None:
    token, token_id = rig.new_token("fleet-revoked")
    # Every host has the token cached as valid.
    for i in range(3):
        assert httpx.get(rig.host(i) + "/account/balance", headers=auth(token)).status_code == 200
    r = httpx.delete(f"{rig.fleet.hosts[0].base_url}/admin/tokens/{token_id}", headers=rig.admin)
    assert r.status_code == 200, r.text
    revoked_at = time.monotonic()
    refused = httpx.post(rig.host(0) + "/images/generations", json=SMALL, headers=auth(token), timeout=60)
    assert refused.status_code == 401, "the host that revoked it must refuse it at once"
    for i in (1, 2):

        def refuses(i: int = i) -> bool:
            return httpx.get(rig.host(i) + "/account/balance", headers=auth(token)).status_code == 401

        wait_for(f"host {i} refusing a revoked token", refuses, timeout=TOKEN_CACHE_TTL_S + 10)
    print(
        f"\nrevoked token refused by all 3 hosts {time.monotonic() - revoked_at:.1f} s after the revoke "
        f"(IMAGERELAY_TOKEN_CACHE_TTL_S={TOKEN_CACHE_TTL_S:g})"
    )
    served = set()
    for _ in range(6):
        r = httpx.post(rig.lb + "/images/generations", json=SMALL, headers=auth(token), timeout=60)
        assert r.status_code == 401 and set(r.json()["error"]) >= {"message", "type", "param", "code"}, r.text
        served.add(rig.fleet.served_by(r))
    assert served == {0, 1, 2}
    assert rig.sim_requests("legacy") == []  # no refused call went upstream


def test_a_user_s_webhook_secret_is_the_same_on_every_host(rig: Rig) -> None:
    """A job's webhook is signed by whichever host runs it, so every host must derive the
    same per-user secret (IMAGERELAY_WEBHOOK_KEY, shared like the URL signing key)."""
    token, _ = rig.new_token("fleet-webhooks")
    secrets = {
        httpx.get(rig.host(i) + "/account/webhook-secret", headers=auth(token)).json()["secret"] for i in range(3)
    }
    assert len(secrets) == 1, "hosts sign webhooks with different secrets"


def _channel(rig: Rig, i: int, name: str) -> dict[str, Any]:
    data = httpx.get(rig.fleet.hosts[i].base_url + "/admin/channels", headers=rig.admin).json()["data"]
    return dict(next(c for c in data if c["name"] == name))


def test_a_channel_cooled_on_one_host_is_avoided_by_all(rig: Rig) -> None:
    token, _ = rig.new_token("fleet-cooldown", group="Sora2Official")
    rig.fault("azure-1", type="500", count=10)
    try:
        # azure-1 goes first (priority 10) and fails, openai-a answers; until host 0's
        # breaker cools azure-1 down (3 failures, and half of its calls in the window).
        for _ in range(10):
            r = httpx.post(rig.host(0) + "/images/generations", json=OFFICIAL, headers=auth(token), timeout=60)
            assert r.status_code == 200, r.text
            if _channel(rig, 0, "azure-1")["health"]["cooldown_remaining_s"] > 0:
                break
        assert _channel(rig, 0, "azure-1")["health"]["cooldown_remaining_s"] > 0, "host 0 never cooled azure-1"
        assert len(rig.sim_requests("azure-1")) >= 3
        for i in (1, 2):
            wait_for(
                f"host {i} seeing the cooldown",
                lambda i=i: _channel(rig, i, "azure-1")["health"]["cooldown_remaining_s"] > 0,
                timeout=10,
            )
        rig.clear()
        served = set()
        for _ in range(6):
            r = httpx.post(rig.lb + "/images/generations", json=OFFICIAL, headers=auth(token), timeout=60)
            assert r.status_code == 200, r.text
            served.add(rig.fleet.served_by(r))
        assert served == {0, 1, 2}
        assert rig.sim_requests("azure-1") == []  # no host tried it, not even once
        assert len(rig.sim_requests("openai-a")) == 6
        for i in (1, 2):
            assert _channel(rig, i, "azure-1")["health"]["consecutive_failures"] == 0
    finally:
        # Enabling a channel clears its shared cooldown, for the tests that follow.
        httpx.post(rig.fleet.balancer.base_url + "/admin/channels/azure-1/enable", headers=rig.admin)


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: records every delivery, answers 200."""

    calls: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).calls.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def _local_image_files(rig: Rig) -> list[Path]:
    """Image or job files on any host's own disk (there must be none: the store is shared)."""
    return [
        f
        for gw in rig.fleet.hosts
        for area in ("images", "jobs")
        if (gw.data_dir / area).exists()
        for f in (gw.data_dir / area).rglob("*")
        if f.is_file()
    ]


def test_a_url_image_written_through_one_host_is_fetched_through_the_others(rig: Rig) -> None:
    token, _ = rig.new_token("fleet-urls")
    r = httpx.post(
        rig.host(0) + "/images/generations", json={**SMALL, "response_format": "url"}, headers=auth(token), timeout=60
    )
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith(rig.fleet.balancer.base_url + "/"), url  # IMAGERELAY_PUBLIC_BASE_URL: the balancer
    served: dict[int, bytes] = {}
    for _ in range(6):
        got = httpx.get(url, timeout=30)
        assert got.status_code == 200, got.text
        served[rig.fleet.served_by(got)] = got.content
    assert set(served) == {0, 1, 2}
    assert len(set(served.values())) == 1 and served[1][:8] == b"\x89PNG\r\n\x1a\n"
    # Straight from the hosts that did not write it, too.
    path = url.removeprefix(rig.fleet.balancer.base_url)
    for i in (1, 2):
        direct = httpx.get(rig.fleet.hosts[i].base_url + path, timeout=30)
        assert direct.status_code == 200 and direct.content == served[0]
    assert any(k.startswith("fleet/") for k in rig.s3.keys(rig.bucket)), "the image is not in the shared store"
    assert _local_image_files(rig) == []


def test_an_edit_job_submitted_through_one_host_is_run_by_another_after_it_stopped(rig: Rig) -> None:
    r = httpx.post(
        rig.fleet.balancer.base_url + "/admin/tokens",
        headers=rig.admin,
        json={"user": "fleet-jobs", "group": "default", "concurrency": 1},
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert (
        httpx.post(
            f"{rig.fleet.balancer.base_url}/admin/users/fleet-jobs/balance",
            headers=rig.admin,
            json={"amount_usd": "1", "reason": "rehearsal credit"},
        ).status_code
        == 200
    )
    # A slow call on host 1 holds the token's one concurrency slot (shared through
    # Redis): no worker anywhere may start the job while host 0, which took it, stops.
    rig.fault("legacy", type="latency", latency_s=6.0, count=1)
    slow: list[httpx.Response] = []
    holder = threading.Thread(
        target=lambda: slow.append(
            httpx.post(rig.host(1) + "/images/generations", json=SMALL, headers=auth(token), timeout=60)
        )
    )
    holder.start()
    wait_for("the slot holder reaching upstream", lambda: len(rig.sim_requests("legacy")) == 1, timeout=20)
    source = png_bytes(320, 240, (20, 120, 220))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    # The user learns their webhook secret from the host they talk to.
    secret = httpx.get(rig.host(0) + "/account/webhook-secret", headers=auth(token)).json()["secret"]
    submitted = httpx.post(
        rig.host(0) + "/images/edits",
        headers={**auth(token), "Prefer": "respond-async"},
        data={"model": "gpt-image-2", "prompt": "make it red", "webhook_url": hook},
        files={"image": ("in.png", source, "image/png")},
        timeout=60,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    rig.fleet.stop(0)
    # A clean stop, though its data directory is read-only (the lock file stays behind).
    stopped_log = rig.fleet.hosts[0].log_text()
    assert "Application shutdown complete" in stopped_log and "Traceback" not in stopped_log, stopped_log
    try:
        holder.join(timeout=60)
        assert slow and slow[0].status_code == 200, slow

        def job() -> dict[str, Any]:
            return dict(httpx.get(f"{rig.lb}/images/jobs/{job_id}", headers=auth(token), timeout=30).json())

        wait_for("the job finishing on another host", lambda: job()["status"] in ("succeeded", "failed"), timeout=60)
        done = job()
        assert done["status"] == "succeeded", done
        # The upstream got the very image host 0 accepted, read back from the shared store.
        edits = [q for q in rig.sim_requests("legacy") if q["path"].endswith("/images/edits")]
        assert edits
        assert {p["sha256"] for q in edits for p in q["parts"] if p.get("filename")} == {
            hashlib.sha256(source).hexdigest()
        }
        # Its result image, kept in the store, is served by every live host.
        url = done["result"]["data"][0]["url"]
        assert url.startswith(rig.fleet.balancer.base_url + "/"), url
        images = {}
        for _ in range(4):
            got = httpx.get(url, timeout=30)
            assert got.status_code == 200 and got.content[:4] == b"\x89PNG", got.text
            images[rig.fleet.served_by(got)] = got.content
        assert set(images) == {1, 2} and len(set(images.values())) == 1
        assert _local_image_files(rig) == []
        assert balance(rig.lb, token) == (1_000_000 - 2 * PER_CALL, 0)
        # The host that ran it delivered the webhook, signed with the secret host 0 gave.
        wait_for("the webhook delivery", lambda: bool(_Receiver.calls), timeout=30)
        headers, body = _Receiver.calls[0]
        ts, mac = parse_signature(headers["X-Imagerelay-Signature"])
        assert hmac.compare_digest(mac, hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest())
        assert headers["X-Imagerelay-Job-Id"] == job_id
    finally:
        receiver.shutdown()
        rig.fleet.restart(0)
        rig.fleet.wait_balanced()


def test_killing_a_host_with_calls_in_flight_loses_no_money_and_the_others_serve(rig: Rig) -> None:
    token, _ = rig.new_token("fleet-kill", usd="5")
    full = balance(rig.lb, token)[0]
    in_flight = 4
    victim = 2
    rig.fault("legacy", type="latency", latency_s=60, count=in_flight)
    outcomes: list[str] = []

    def doomed() -> None:
        try:
            r = httpx.post(rig.host(victim) + "/images/generations", json=SMALL, headers=auth(token), timeout=120)
            outcomes.append(str(r.status_code))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=doomed, daemon=True) for _ in range(in_flight)]
    for t in threads:
        t.start()
    wait_for("the doomed calls reaching upstream", lambda: len(rig.sim_requests("legacy")) == in_flight, timeout=30)
    held_ids = {
        r[0]
        for r in rig.rows(
            "SELECT h.request_id FROM holds h JOIN users u ON u.id = h.user_id WHERE u.name = ?", "fleet-kill"
        )
    }
    assert len(held_ids) == in_flight and balance(rig.lb, token)[1] == PER_CALL * in_flight
    rig.fleet.kill(victim)
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == in_flight and "200" not in outcomes, outcomes

    # The balancer keeps serving from the others: no client sees the dead host.
    served = set()
    for _ in range(9):
        r = httpx.post(rig.lb + "/images/generations", json=SMALL, headers=auth(token), timeout=60)
        assert r.status_code == 200, r.text
        served.add(rig.fleet.served_by(r))
    assert served == {0, 1}

    # A peer releases the dead host's holds once its lease lapsed.
    took = wait_for("the dead host's holds released", lambda: balance(rig.lb, token)[1] == 0, timeout=LEASE_S + 40)
    print(
        f"\nholds of {in_flight} calls on a SIGKILLed host released by its peers "
        f"{time.monotonic() - killed_at:.1f} s after the kill (lease {LEASE_S:g} s; waited {took:.1f} s)"
    )
    records = rig.rows(
        "SELECT request_id, status, error_code, cost_micros FROM usage_records WHERE request_id = ANY(?)",
        list(held_ids),
    )
    assert sorted(r[0] for r in records) == sorted(held_ids)  # one record per interrupted call
    assert all(r[1:] == (499, "interrupted", 0) for r in records), records
    assert balance(rig.lb, token) == (full - 9 * PER_CALL, 0)
    audit = rig.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for i in (0, 1):
        assert httpx.get(rig.fleet.hosts[i].base_url + "/readyz").status_code == 200
