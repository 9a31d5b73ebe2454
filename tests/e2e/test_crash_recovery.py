"""kill -9 with calls in flight (sync, streaming, jobs, idempotent retries), restart on
the same data: the interrupted calls' holds come back at start-up, each call has one
usage record, the books balance, idempotency keys work, and the jobs finish."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagerelay_sim.server import DEFAULT_MODELS, create_upstream_app
from tests.support.catalogs import write_catalog
from tests.support.gateway import Gateway, run_gateway
from tests.support.servers import run_asgi
from tests.support.services import drop_postgres_database, fresh_postgres_database, sql_rows

KEY = "sk-crash-sim"
GROUP = "Sora2Official"
BODY = {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", "size": "1024x1024", "quality": "low"}
SYNC, KEYED, STREAMS, JOBS = 6, 2, 3, 2


class Rig:
    def __init__(self, data_dir: Path, env: dict[str, str], sim: str, database_url: str | None) -> None:
        self.data_dir, self.env, self.sim, self.database_url = data_dir, env, sim, database_url

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read what the gateway wrote (the test's own view of the database)."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'imagerelay.db'}"
        return [tuple(r) for r in sql_rows(url, sql)]


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url, name = fresh_postgres_database()
            stack.callback(drop_postgres_database, name)
        # Quiet: at the end the simulator drops the calls the crash left sleeping.
        sim = stack.enter_context(run_asgi(create_upstream_app("openai", api_keys=[KEY]), log_level="critical"))
        legacy = stack.enter_context(
            run_asgi(
                create_upstream_app("openai", api_keys=[KEY], models=(*DEFAULT_MODELS, "gpt-image-2-vip")),
                log_level="critical",
            )
        )
        catalog = write_catalog(
            tmp_path / "catalog.yaml",
            [
                {
                    "name": "slow",
                    "type": "openai",
                    "base_url": sim + "/v1",
                    "api_key_env": "CRASH_KEY",
                    "pools": ["official-mixed", "official-pure"],
                },
                {
                    "name": "legacy",
                    "type": "openai-compatible",
                    "base_url": legacy + "/v1",
                    "api_key_env": "CRASH_KEY",
                    "pools": ["legacy", "legacy-vip"],
                },
            ],
        )
        env = {"CRASH_KEY": KEY, "IMAGERELAY_CATALOG": str(catalog), "IMAGERELAY_JOB_WORKERS": str(JOBS)}
        if database_url:
            env["IMAGERELAY_DATABASE_URL"] = database_url
        data = tmp_path / "data"
        data.mkdir()
        yield Rig(data, env, sim, database_url)


def auth(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.tokens[GROUP]}"}


def balance(gw: Gateway) -> tuple[int, int]:
    body = httpx.get(gw.v1 + "/account/balance", headers=auth(gw)).json()
    return int(body["balance_micros"]), int(body["held_micros"])


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def in_background(fn: Any, *args: Any) -> None:
    """A client whose connection the crash cuts: whatever it gets is ignored."""

    def run() -> None:
        with suppress(httpx.HTTPError):
            fn(*args)

    threading.Thread(target=run, daemon=True).start()


def sync_call(gw: Gateway, key: str | None) -> None:
    headers = {**auth(gw), **({"Idempotency-Key": key} if key else {})}
    httpx.post(gw.v1 + "/images/generations", headers=headers, json=BODY, timeout=300)


def stream_call(gw: Gateway) -> None:
    body = {**BODY, "stream": True, "partial_images": 1}
    with httpx.stream("POST", gw.v1 + "/images/generations", headers=auth(gw), json=body, timeout=300) as r:
        for _ in r.iter_bytes():
            pass


def test_kill_9_with_calls_in_flight_then_restart(rig: Rig) -> None:
    with run_gateway(rig.data_dir, extra_env=rig.env) as gw:
        full, _ = balance(gw)
        done = httpx.post(gw.v1 + "/images/generations", headers=auth(gw), json=BODY, timeout=60)
        assert done.status_code == 200, done.text
        # Every call from now on waits a minute upstream: the crash finds them all in flight.
        assert httpx.post(rig.sim + "/_sim/faults", json={"type": "latency", "latency_s": 60}).status_code in (200, 201)
        httpx.delete(rig.sim + "/_sim/requests")
        jobs = []
        for _ in range(JOBS):
            r = httpx.post(gw.v1 + "/images/generations", headers={**auth(gw), "Prefer": "respond-async"}, json=BODY)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["id"])
        for _ in range(SYNC):
            in_background(sync_call, gw, None)
        for i in range(KEYED):
            in_background(sync_call, gw, f"crash-key-{i}")
        for _ in range(STREAMS):
            in_background(stream_call, gw)
        in_flight = SYNC + KEYED + STREAMS + JOBS
        wait_for(lambda: len(httpx.get(rig.sim + "/_sim/requests").json()["requests"]) == in_flight)
        held = {r[0] for r in rig.rows("SELECT request_id FROM holds")}
        job_holds = {r[0] for r in rig.rows("SELECT request_id FROM jobs")}
        calls = held - job_holds
        assert len(calls) == SYNC + KEYED + STREAMS and job_holds <= held
        assert balance(gw)[1] > 0
        gw.process.kill()  # SIGKILL: no shutdown code runs
        gw.process.wait()

    httpx.delete(rig.sim + "/_sim/faults")
    restarted_at = time.monotonic()
    with run_gateway(rig.data_dir, extra_env=rig.env) as gw:
        answering_after = time.monotonic() - restarted_at
        # Released during start-up, before the gateway answered its first request.
        open_holds = {r[0] for r in rig.rows("SELECT request_id FROM holds")}
        assert not open_holds & calls, f"interrupted calls still hold money {answering_after:.1f} s after restart"
        print(
            f"\n[{rig.database_url and 'postgresql' or 'sqlite'}] {len(calls)} interrupted calls' holds released "
            f"{answering_after:.2f} s after restart (the gateway answered at once with them released)"
        )
        assert f"released {len(calls)} hold(s) left by an earlier run" in gw.log_text()

        records = rig.rows("SELECT request_id, status, error_code, cost_micros FROM usage_records")
        interrupted = [r for r in records if r[0] in calls]
        assert sorted(r[0] for r in interrupted) == sorted(calls)  # one record per interrupted call
        assert all(r[1:] == (499, "interrupted", 0) for r in interrupted), interrupted

        # The idempotency keys of interrupted calls are usable: the retry runs (not 409
        # "still running"), and is then replayed.
        for i in range(KEYED):
            headers = {**auth(gw), "Idempotency-Key": f"crash-key-{i}"}
            retry = httpx.post(gw.v1 + "/images/generations", headers=headers, json=BODY, timeout=60)
            assert retry.status_code == 200, retry.text
            assert "idempotent-replayed" not in retry.headers
            again = httpx.post(gw.v1 + "/images/generations", headers=headers, json=BODY, timeout=60)
            assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
            assert again.content == retry.content

        # The jobs were re-queued with their holds and finish.
        for job_id in jobs:

            def finished(job_id: str = job_id) -> bool:
                r = httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers=auth(gw))
                return bool(r.json()["status"] in ("succeeded", "failed", "canceled"))

            wait_for(finished, timeout=60)
            assert httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers=auth(gw)).json()["status"] == "succeeded"

        records = rig.rows("SELECT request_id, status, cost_micros FROM usage_records")
        assert len(records) == len({r[0] for r in records})  # never two records for one call
        assert len(records) == 1 + len(calls) + KEYED + JOBS
        charged = sum(r[2] for r in records if r[1] == 200)
        assert sum(1 for r in records if r[1] == 200) == 1 + KEYED + JOBS
        wait_for(lambda: balance(gw) == (full - charged, 0))
        assert rig.rows("SELECT count(*) FROM holds") == [(0,)]

    audit = subprocess.run(
        [sys.executable, "-m", "imagerelay", "audit", "--data-dir", str(rig.data_dir)],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_live_peer_keeps_its_holds_and_a_dead_one_s_come_back(rig: Rig) -> None:
    """Two gateways on one database: starting the second never touches the first's calls
    in flight; once the first is killed, the second releases them within a tick."""
    with run_gateway(rig.data_dir, extra_env=rig.env) as first:
        full, _ = balance(first)
        assert httpx.post(rig.sim + "/_sim/faults", json={"type": "latency", "latency_s": 60}).status_code in (200, 201)
        httpx.delete(rig.sim + "/_sim/requests")
        for _ in range(3):
            in_background(sync_call, first, None)
        in_background(stream_call, first)
        wait_for(lambda: len(httpx.get(rig.sim + "/_sim/requests").json()["requests"]) == 4)
        calls = {r[0] for r in rig.rows("SELECT request_id FROM holds")}
        assert len(calls) == 4
        with run_gateway(rig.data_dir, extra_env=rig.env) as second:
            assert {r[0] for r in rig.rows("SELECT request_id FROM holds")} == calls  # a live peer's: untouched
            assert "left by an earlier run" not in second.log_text()
            first.process.kill()
            first.process.wait()
            killed_at = time.monotonic()
            wait_for(lambda: not rig.rows("SELECT request_id FROM holds"), timeout=60)
            print(
                f"\n[{rig.database_url and 'postgresql' or 'sqlite'}] a live peer released the killed process's "
                f"{len(calls)} holds {time.monotonic() - killed_at:.1f} s after the kill"
            )
            records = rig.rows("SELECT request_id, status, error_code FROM usage_records")
            assert sorted(records) == sorted((c, 499, "interrupted") for c in calls)
            assert balance(second) == (full, 0)


def test_a_live_peer_keeps_its_running_job_and_takes_over_a_dead_one_s(rig: Rig) -> None:
    """A second gateway starting on the same database leaves a job the first is running
    alone (running it too would call upstream twice); once the first is killed, the
    second re-queues the job within a tick, runs it, and it is charged once."""
    with run_gateway(rig.data_dir, extra_env=rig.env) as first:
        full, _ = balance(first)
        assert httpx.post(rig.sim + "/_sim/faults", json={"type": "latency", "latency_s": 60}).status_code in (200, 201)
        httpx.delete(rig.sim + "/_sim/requests")
        submitted = httpx.post(first.v1 + "/images/jobs", headers=auth(first), json={**BODY, "endpoint": "generations"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        wait_for(lambda: len(httpx.get(rig.sim + "/_sim/requests").json()["requests"]) == 1)
        with run_gateway(rig.data_dir, extra_env=rig.env) as second:
            time.sleep(1.5)  # the second's workers claim at once; give them the chance to
            assert len(httpx.get(rig.sim + "/_sim/requests").json()["requests"]) == 1
            assert httpx.get(second.v1 + f"/images/jobs/{job_id}", headers=auth(second)).json()["status"] == "running"
            first.process.kill()
            first.process.wait()
            httpx.delete(rig.sim + "/_sim/faults")

            def succeeded() -> bool:
                return (
                    httpx.get(second.v1 + f"/images/jobs/{job_id}", headers=auth(second)).json()["status"]
                    == "succeeded"
                )

            wait_for(succeeded, timeout=60)
            assert "re-queued 1 job(s) whose process is gone" in second.log_text()
            records = rig.rows("SELECT status FROM usage_records WHERE cost_micros > 0")
            assert records == [(200,)]
            spent = full - balance(second)[0]
            assert spent > 0 and balance(second)[1] == 0
    audit = subprocess.run(
        [sys.executable, "-m", "imagerelay", "audit", "--data-dir", str(rig.data_dir)],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
