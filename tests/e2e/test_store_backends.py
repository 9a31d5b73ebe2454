"""Gateways on the shared image stores (docs/storage.md): ``s3`` against a real
S3-compatible server on loopback (moto_server) with gateway-served and presigned URLs,
and ``database`` on SQLite and PostgreSQL. Two gateway processes with data directories
of their own share the database and the store, as two machines would: a URL image
written through one is served by the other, and an edit job submitted to one (which runs
no jobs) is run by the other from inputs that live in the store, not on either disk."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from PIL import Image

from tests.conftest import png_bytes
from tests.support import backend
from tests.support.gateway import Gateway, run_gateway
from tests.support.s3 import S3Server
from tests.support.services import drop_postgres_database, fresh_postgres_database, sql_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Fleet:
    kind: str  # s3 | s3-presigned | database-sqlite | database-postgres
    env: dict[str, str]  # shared by every host
    database_url: str
    tmp: Path
    s3: S3Server | None = None
    bucket: str = ""
    prefix: str = ""

    def host(self, name: str, stack: ExitStack, **env: str) -> Gateway:
        data = self.tmp / name
        data.mkdir()
        return stack.enter_context(run_gateway(data, extra_env={**self.env, **env}))

    def stored(self, area: str) -> list[str]:
        """Keys of one store area (images | results | inputs), read from the store itself."""
        if self.s3 is not None:
            base = f"{self.prefix}{area}/"
            return [k.removeprefix(base) for k in self.s3.keys(self.bucket, base)]
        return sorted(
            {r[0] for r in sql_rows(self.database_url, "SELECT key FROM blob_chunks WHERE area = ?", (area,))}
        )


@pytest.fixture(params=["s3", "s3-presigned", "database-sqlite", "database-postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    kind: str = request.param
    common = {
        "IMAGERELAY_URL_SIGNING_KEY": "shared-signing-key-" + "x" * 24,
        "IMAGERELAY_SECRET_KEY": Fernet.generate_key().decode(),
        "IMAGERELAY_JOB_TTL_S": "600",
    }
    pg_name = None
    if kind == "database-postgres":
        url, pg_name = fresh_postgres_database()
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    common["IMAGERELAY_DATABASE_URL"] = url
    try:
        if kind.startswith("s3"):
            server: S3Server = request.getfixturevalue("s3_server")
            bucket = server.create_bucket()
            urls = "presigned" if kind == "s3-presigned" else "gateway"
            yield Fleet(
                kind,
                {**common, **server.env(bucket, prefix="fleet-a/", urls=urls)},
                url,
                tmp_path,
                s3=server,
                bucket=bucket,
                prefix="fleet-a/",
            )
        else:
            yield Fleet(kind, {**common, "IMAGERELAY_IMAGE_STORE": "database"}, url, tmp_path)
    finally:
        if pg_name is not None:
            drop_postgres_database(pg_name)


def auth(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.tokens['default']}"}


def poll(gw: Gateway, job_id: str, timeout: float = 90, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{gw.v1}/images/jobs/{job_id}", headers=auth(gw), params=params)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed", "canceled"):
            return dict(r.json())
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def no_local_images(gw: Gateway) -> None:
    assert not (gw.data_dir / "images").exists() and not (gw.data_dir / "jobs").exists()


def test_url_images_and_edit_jobs_live_in_the_shared_store(fleet: Fleet) -> None:
    with ExitStack() as stack:
        a = fleet.host("host-a", stack, IMAGERELAY_JOB_WORKERS="0")
        # A URL image written through host A...
        r = httpx.post(
            a.v1 + "/images/generations",
            headers=auth(a),
            timeout=60,
            json={"model": "gpt-image-2", "prompt": "a shared kite", "response_format": "url"},
        )
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        name = url.split("?")[0].rsplit("/", 1)[-1]
        assert fleet.stored("images") == [name]

        # ...and an edit job submitted to it, which it does not run: its inputs are in the store.
        source = png_bytes(400, 300)
        submitted = httpx.post(
            a.v1 + "/images/jobs",
            headers=auth(a),
            files={"image": ("a.png", source, "image/png")},
            data={"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert fleet.stored("inputs") == [f"{job_id}/0.bin", f"{job_id}/images.json"]

        b = fleet.host("host-b", stack, IMAGERELAY_JOB_WORKERS="2")
        if fleet.kind == "s3-presigned":
            endpoint = fleet.env["IMAGERELAY_IMAGE_STORE_S3_ENDPOINT_URL"]
            assert url.startswith(endpoint) and "X-Amz-Signature=" in url
            served = httpx.get(url)
        else:
            assert url.startswith(a.base_url)
            served = httpx.get(url.replace(a.base_url, b.base_url))  # host B serves host A's image
        assert served.status_code == 200 and served.content.startswith(PNG_MAGIC), served.text
        assert served.headers["content-type"] == "image/png"
        assert int(served.headers["content-length"]) == len(served.content)

        # Host B runs the job from the inputs in the store; its result is in the store too.
        done = poll(b, job_id, include="b64_json")
        assert done["status"] == "succeeded", done
        item = done["result"]["data"][0]
        result_url = item["url"]
        if fleet.kind != "s3-presigned":
            result_url = result_url.replace(b.base_url, a.base_url)  # and host A serves host B's result
        image = httpx.get(result_url)
        assert image.status_code == 200
        assert image.content == base64.b64decode(item["b64_json"])
        assert Image.open(io.BytesIO(image.content)).size == (1280, 720)
        result_name = result_url.split("?")[0].rsplit("/", 1)[-1]
        assert result_name.startswith("job-")
        results = fleet.stored("results") if fleet.kind.startswith("s3") else fleet.stored("images")
        assert result_name in results
        assert fleet.stored("inputs") == []  # deleted when the job ended

        # A signature that does not match is refused by every host, whatever the store.
        if fleet.kind != "s3-presigned":
            on_b = url.replace(a.base_url, b.base_url)
            forged = on_b[:-1] + ("1" if on_b.endswith("0") else "0")  # the signature's last digit
            refused = httpx.get(forged)
            assert refused.status_code == 404 and refused.json()["error"]["type"] == "invalid_request_error"
        for host in (a, b):
            no_local_images(host)
            assert "Traceback" not in host.log_text()


def test_an_unreachable_store_is_a_clean_503(s3_server: S3Server, tmp_path: Path) -> None:
    env = s3_server.env("bucket-that-does-not-exist")
    with run_gateway(tmp_path, extra_env=env) as gw:
        before = httpx.get(gw.v1 + "/account/balance", headers=auth(gw)).json()
        r = httpx.post(
            gw.v1 + "/images/generations",
            headers=auth(gw),
            timeout=60,
            json={"model": "gpt-image-2", "prompt": "nowhere to put it", "response_format": "url"},
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "image_store_unavailable" and error["type"] == "server_error"
        # Not charged: the answer never reached the caller.
        after = httpx.get(gw.v1 + "/account/balance", headers=auth(gw)).json()
        assert after == before and after["held_micros"] == 0
        # b64 answers need no store and still work.
        ok = httpx.post(
            gw.v1 + "/images/generations",
            headers=auth(gw),
            timeout=60,
            json={"model": "gpt-image-2", "prompt": "inline", "response_format": "b64_json"},
        )
        assert ok.status_code == 200, ok.text
        log = gw.log_text()
        assert "NoSuchBucket" in log and "Traceback" not in log
        assert env["IMAGERELAY_IMAGE_STORE_S3_SECRET_ACCESS_KEY"] not in log


# Only s3: the store that can lose its bucket under a running fleet (URL mode is moot).
@pytest.mark.parametrize("fleet", ["s3"], indirect=True)
def test_a_job_whose_inputs_cannot_be_read_fails_cleanly_and_is_not_charged(fleet: Fleet) -> None:
    with ExitStack() as stack:
        a = fleet.host("host-a", stack, IMAGERELAY_JOB_WORKERS="0")
        before = httpx.get(a.v1 + "/account/balance", headers=auth(a)).json()
        submitted = httpx.post(
            a.v1 + "/images/jobs",
            headers=auth(a),
            files={"image": ("a.png", png_bytes(64, 64), "image/png")},
            data={"endpoint": "edits", "model": "gpt-image-2-vip", "prompt": "blue", "size": "1280x720"},
        )
        assert submitted.status_code == 202, submitted.text
        client = fleet.s3.client()
        for key in fleet.s3.keys(fleet.bucket):
            client.delete_object(Bucket=fleet.bucket, Key=key)
        client.delete_bucket(Bucket=fleet.bucket)  # the store is gone under the fleet
        b = fleet.host("host-b", stack, IMAGERELAY_JOB_WORKERS="1")
        done = poll(b, submitted.json()["id"])
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "image_store_unavailable" and done["error"]["type"] == "server_error"
        after = httpx.get(a.v1 + "/account/balance", headers=auth(a)).json()
        assert after == before  # the hold went back; nothing charged
        for host in (a, b):
            assert "Traceback" not in host.log_text()
            assert fleet.env["IMAGERELAY_IMAGE_STORE_S3_SECRET_ACCESS_KEY"] not in host.log_text()


# Not s3-presigned nor database-postgres: the same sweep as s3 and database-sqlite.
@pytest.mark.parametrize("fleet", ["s3", "database-sqlite"], indirect=True)
def test_purge_expires_url_images_in_the_shared_store(fleet: Fleet) -> None:
    env = {**fleet.env, "IMAGERELAY_IMAGE_URL_TTL_S": "1"}
    with ExitStack() as stack:
        gw = fleet.host("host", stack, IMAGERELAY_IMAGE_URL_TTL_S="1")
        r = httpx.post(
            gw.v1 + "/images/generations",
            headers=auth(gw),
            timeout=60,
            json={"model": "gpt-image-2", "prompt": "brief", "response_format": "url"},
        )
        assert r.status_code == 200, r.text
        assert len(fleet.stored("images")) == 1
        time.sleep(3.5)  # past the URL lifetime and its clock margin (1 s each), LastModified's second
        done = subprocess.run(
            [sys.executable, "-m", "imagerelay", "purge", "--data-dir", str(gw.data_dir)],
            capture_output=True,
            text=True,
            env=backend.cli_env(gw.data_dir, env),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed 1 expired stored image(s)" in done.stdout
        assert fleet.stored("images") == []
