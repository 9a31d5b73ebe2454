"""Async jobs under abuse: per-user and per-token caps, fair scheduling between users,
token limits on jobs, inputs deleted on every terminal path, results that live as long
as the job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagerelay_sim.server import DEFAULT_MODELS, create_upstream_app
from tests.conftest import png_bytes
from tests.support import backend
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi

KEY = "sk-jobs-sim"
ADMIN = "admin-job-abuse"
SLOT_S = 1.5  # upstream time of one job: one worker slot


class InFlight:
    """Counts image calls in flight at a simulator (test-side wrapper; uvicorn runs it on one loop)."""

    def __init__(self, app: Any) -> None:
        self.app, self.now, self.peak = app, 0, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "/images/" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


@dataclass
class Rig:
    gw: Gateway
    env: dict[str, str]
    legacy: InFlight
    official: InFlight
    urls: dict[str, str]

    def latency(self, seconds: float) -> None:
        for url in self.urls.values():
            assert httpx.post(url + "/_sim/config", json={"latency_s": seconds}).status_code == 200


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("job-abuse")
    legacy = InFlight(
        create_upstream_app("openai", api_keys=[KEY], latency_s=SLOT_S, models=(*DEFAULT_MODELS, "gpt-image-2-vip"))
    )
    official = InFlight(create_upstream_app("openai", api_keys=[KEY], latency_s=SLOT_S))
    with run_asgi(legacy) as legacy_url, run_asgi(official) as official_url:
        catalog = write_catalog(
            tmp / "catalog.yaml",
            [
                {
                    "name": "legacy",
                    "type": "openai-compatible",
                    "base_url": legacy_url + "/v1",
                    "api_key_env": "JOBS_KEY",
                    "pools": ["legacy", "legacy-vip"],
                },
                {
                    "name": "official",
                    "type": "openai",
                    "base_url": official_url + "/v1",
                    "api_key_env": "JOBS_KEY",
                    "pools": ["official-mixed", "official-pure"],
                },
            ],
        )
        env = {
            "JOBS_KEY": KEY,
            "IMAGERELAY_CATALOG": str(catalog),
            "IMAGERELAY_ADMIN_TOKEN": ADMIN,
            "IMAGERELAY_JOB_WORKERS": "2",
            "IMAGERELAY_JOB_MAX_ACTIVE_PER_USER": "12",
            "IMAGERELAY_JOB_MAX_ACTIVE_PER_TOKEN": "10",
            "IMAGERELAY_TOKEN_CACHE_TTL_S": "0",
            "IMAGERELAY_BREAKER_THRESHOLD": "1000",
            "IMAGERELAY_RETRY_BACKOFF_S": "0.02",
            "IMAGERELAY_RETRY_BACKOFF_MAX_S": "0.1",
        }  # the failing-job test must not cool the channel
        data = tmp / "data"
        data.mkdir()
        with run_gateway(data, extra_env=env) as gw:
            yield Rig(gw, env, legacy, official, {"legacy": legacy_url, "official": official_url})


def new_token(rig: Rig, user: str, group: str = "default", **limits: int) -> str:
    h = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(rig.gw.base_url + "/admin/tokens", headers=h, json={"user": user, "group": group, **limits})
    assert r.status_code == 201, r.text
    assert (
        httpx.post(
            f"{rig.gw.base_url}/admin/users/{user}/balance",
            headers=h,
            json={"amount_usd": "10", "reason": "test credit"},
        ).status_code
        == 200
    )
    return str(r.json()["token"])


def submit(rig: Rig, token: str, prompt: str = "a kite", **extra: Any) -> httpx.Response:
    return httpx.post(
        rig.gw.v1 + "/images/jobs",
        headers={"Authorization": f"Bearer {token}"},
        json={"endpoint": "generations", "model": "gpt-image-2", "prompt": prompt, **extra},
    )


def job(rig: Rig, token: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{rig.gw.v1}/images/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def cancel_all(rig: Rig, token: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        httpx.delete(f"{rig.gw.v1}/images/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})


def wait_for(predicate: Any, timeout: float = 30.0, explain: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time" + (f": {explain()}" if explain else "")
        time.sleep(0.05)


def test_one_users_backlog_does_not_delay_another_users_single_job(rig: Rig) -> None:
    backlog = new_token(rig, "backlog-owner")
    queued = [submit(rig, backlog, f"backlog {i}").json()["id"] for i in range(10)]  # ~5 slots of 2 workers
    try:
        # Started, not "running": on a loaded machine a poll can miss the 1.5 s it runs for.
        wait_for(
            lambda: job(rig, backlog, queued[1])["status"] != "queued",
            explain=lambda: f"backlog statuses {[job(rig, backlog, j)['status'] for j in queued]}",
        )
        single = new_token(rig, "single-job")
        submitted = time.monotonic()
        mine = submit(rig, single, "just one").json()["id"]
        wait_for(lambda: job(rig, single, mine)["status"] != "queued", timeout=20)
        waited = time.monotonic() - submitted
        assert waited < SLOT_S + 1.5, f"the single job waited {waited:.1f} s behind another user's backlog"
        wait_for(lambda: job(rig, single, mine)["status"] == "succeeded")
    finally:
        cancel_all(rig, backlog, queued)


def test_per_token_and_per_user_caps_answer_429(rig: Rig) -> None:
    rig.latency(10.0)  # nothing finishes while the test counts
    first, second = new_token(rig, "capped"), new_token(rig, "capped")
    ids: list[tuple[str, str]] = []
    try:
        for i in range(10):
            r = submit(rig, first, f"cap {i}")
            assert r.status_code == 202, r.text
            ids.append((first, r.json()["id"]))
        over = submit(rig, first, "one too many for the key")
        assert over.status_code == 429
        err = over.json()["error"]
        assert err["code"] == "too_many_jobs" and err["type"] and set(err) == {"message", "type", "param", "code"}
        assert "This API key has 10 jobs queued or running" in err["message"] and "(10)" in err["message"]
        assert int(over.headers["retry-after"]) >= 1
        for i in range(2):
            r = submit(rig, second, f"cap b{i}")
            assert r.status_code == 202, r.text
            ids.append((second, r.json()["id"]))
        over = submit(rig, second, "one too many for the user")
        assert over.status_code == 429
        assert "Your account has 12 jobs queued or running" in over.json()["error"]["message"]
        # A canceled job frees its place at once.
        cancel_all(rig, first, [ids[0][1]])
        again = submit(rig, second, "fits again")
        assert again.status_code == 202, again.text
        ids.append((second, again.json()["id"]))
    finally:
        for token, job_id in ids:
            cancel_all(rig, token, [job_id])
        rig.latency(SLOT_S)


def test_concurrency_one_token_never_runs_two_jobs_and_blocks_no_worker(rig: Rig) -> None:
    limited = new_token(rig, "conc-one", concurrency=1)
    other = new_token(rig, "conc-other", group="Sora2Official")
    wait_for(lambda: rig.legacy.now == 0 and rig.official.now == 0)
    rig.legacy.peak = rig.official.peak = 0
    ids = []
    for i in range(3):  # queued behind the running one: the submit takes no concurrency slot
        r = submit(rig, limited, f"serial {i}")
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    wait_for(lambda: rig.legacy.now == 1)
    started = time.monotonic()
    theirs = submit(rig, other, "meanwhile", quality="low").json()["id"]
    # The second worker is free for other tokens while the limited token's jobs wait.
    wait_for(lambda: job(rig, other, theirs)["status"] == "succeeded", timeout=20)
    assert time.monotonic() - started < SLOT_S + 2.0
    assert job(rig, limited, ids[2])["status"] == "queued"
    for job_id in ids:
        wait_for(lambda job_id=job_id: job(rig, limited, job_id)["status"] == "succeeded", timeout=30)
    assert rig.legacy.peak == 1, f"a concurrency-1 token had {rig.legacy.peak} jobs upstream at once"


def test_job_submit_counts_against_rpm(rig: Rig) -> None:
    token = new_token(rig, "rpm-jobs", rpm=2)
    codes = [submit(rig, token, f"rpm {i}").status_code for i in range(3)]
    assert codes == [202, 202, 429]


def test_canceled_running_edit_job_deletes_its_inputs(rig: Rig) -> None:
    token = new_token(rig, "edit-cancel")
    r = httpx.post(
        rig.gw.v1 + "/images/jobs",
        headers={"Authorization": f"Bearer {token}"},
        data={"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"},
        files={"image": ("a.png", png_bytes(400, 300), "image/png")},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    inputs = rig.gw.data_dir / "jobs" / job_id
    assert inputs.is_dir()
    wait_for(lambda: job(rig, token, job_id)["status"] == "running")
    assert (
        httpx.delete(f"{rig.gw.v1}/images/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    wait_for(lambda: not inputs.exists(), timeout=5)


def test_failed_and_queued_canceled_edit_jobs_delete_their_inputs(rig: Rig) -> None:
    token = new_token(rig, "edit-fail")
    hdr = {"Authorization": f"Bearer {token}"}
    form = {"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"}
    # until removed: each job now retries its channel up to IMAGERELAY_MAX_ATTEMPTS times
    httpx.post(rig.urls["legacy"] + "/_sim/faults", json={"type": "500"})
    try:
        ids = [
            httpx.post(
                rig.gw.v1 + "/images/jobs",
                headers=hdr,
                data=form,
                files={"image": ("a.png", png_bytes(64, 64), "image/png")},
            ).json()["id"]
            for _ in range(4)
        ]
        cancel_all(rig, token, ids[3:])  # still queued behind the others
        for job_id in ids[:3]:
            wait_for(lambda job_id=job_id: job(rig, token, job_id)["status"] == "failed")
    finally:
        httpx.delete(rig.urls["legacy"] + "/_sim/faults")
    for job_id in ids:
        assert not (rig.gw.data_dir / "jobs" / job_id).exists()


def test_purge_sweeps_inputs_a_crash_left_behind(rig: Rig) -> None:
    root = rig.gw.data_dir / "jobs"
    orphan, fresh = root / "imgjob_left_by_a_crash", root / "imgjob_being_submitted"
    for folder in (orphan, fresh):
        folder.mkdir()
        (folder / "0.bin").write_bytes(b"x" * 1024)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    purge(rig.gw.data_dir, rig.env)
    assert not orphan.exists()
    assert fresh.exists()  # too young to tell from a submit in progress


def purge(data_dir: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imagerelay", "purge", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=backend.cli_env(data_dir, env),
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- result lifetime ------------------------------------------------------------------------

URL_TTL_S = 2
JOB_TTL_S = 15


def test_job_images_live_as_long_as_the_job(tmp_path: Path) -> None:
    env = {"IMAGERELAY_IMAGE_URL_TTL_S": str(URL_TTL_S), "IMAGERELAY_JOB_TTL_S": str(JOB_TTL_S)}
    with run_gateway(tmp_path, extra_env=env) as gw:
        hdr = {"Authorization": f"Bearer {gw.tokens['default']}"}
        r = httpx.post(
            gw.v1 + "/images/jobs",
            headers=hdr,
            json={"endpoint": "generations", "model": "gpt-image-2", "prompt": "a lasting kite"},
        )
        job_id = r.json()["id"]
        created = time.time()

        def poll(**params: str) -> httpx.Response:
            return httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers=hdr, params=params)

        wait_for(lambda: poll().json()["status"] == "succeeded")
        sync = httpx.post(
            gw.v1 + "/images/generations",
            headers=hdr,
            json={"model": "gpt-image-2", "prompt": "short-lived", "response_format": "url"},
        )
        sync_url = sync.json()["data"][0]["url"]
        time.sleep(2 * URL_TTL_S + 0.5)  # past every URL lifetime (and the purge's margin)
        purge(tmp_path, env)
        assert httpx.get(sync_url).status_code == 404  # the purge ran: a plain URL image is gone
        body = poll(include="b64_json").json()
        assert body["result"]["data"][0]["b64_json"]
        url = body["result"]["data"][0]["url"]
        image = httpx.get(url)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
        name = url.split("?")[0].rsplit("/", 1)[-1]

        time.sleep(max(0.0, created + JOB_TTL_S + 1.5 - time.time()))
        assert poll().status_code == 404
        assert httpx.get(url).status_code == 404  # its URL ended with the job
        purge(tmp_path, env)
        assert not (tmp_path / "images" / name).exists()


def test_cancel_through_another_replica_deletes_inputs(rig: Rig) -> None:
    """Two processes on one data directory: this one runs no jobs, so the job it takes runs
    in the other; the cancel reaches the running one through the database."""
    token = new_token(rig, "edit-cancel-elsewhere")
    hdr = {"Authorization": f"Bearer {token}"}
    with run_gateway(rig.gw.data_dir, extra_env={**rig.env, "IMAGERELAY_JOB_WORKERS": "0"}) as other:
        r = httpx.post(
            other.v1 + "/images/jobs",
            headers=hdr,
            data={"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"},
            files={"image": ("a.png", png_bytes(400, 300), "image/png")},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        inputs = rig.gw.data_dir / "jobs" / job_id
        wait_for(lambda: job(rig, token, job_id)["status"] == "running")
        assert inputs.is_dir()
        assert httpx.delete(f"{other.v1}/images/jobs/{job_id}", headers=hdr).status_code == 200
        wait_for(lambda: not inputs.exists(), timeout=5)
        wait_for(lambda: httpx.get(other.v1 + "/account/balance", headers=hdr).json()["held_micros"] == 0, timeout=5)
        assert job(rig, token, job_id)["status"] == "canceled"
        # The replica running it learnt why from the job's row: its record says canceled.
        (request_id,) = backend.query(rig.gw.data_dir, "select request_id from jobs where id=?", (job_id,))[0]
        records = backend.query(
            rig.gw.data_dir, "select status, error_code from usage_records where request_id like ?", (request_id + "%",)
        )
        assert [tuple(r) for r in records] == [(499, "canceled")]
