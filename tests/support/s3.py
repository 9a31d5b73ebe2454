"""A real S3-compatible server on loopback for the image store's tests: moto's standalone
server (``moto_server``, from ``moto[server]`` in the test extra), run as its own process
the way the upstream simulator stands in for paid upstreams.

Use the session fixture ``s3_server`` (registered in tests/conftest.py), then
``s3_server.create_bucket()`` for a fresh bucket per test and ``s3_server.env(bucket)``
for a gateway's environment (IMAGERELAY_IMAGE_STORE=s3 and its settings).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import free_port

ACCESS_KEY_ID = "imagerelay-test-key"
SECRET_ACCESS_KEY = "imagerelay-test-secret"  # moto accepts any pair; the gateway must sign
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> Any:
        """A plain boto3 client for test set-up and inspection (not the gateway's code)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def create_bucket(self, name: str | None = None) -> str:
        bucket = name or f"imagerelay-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def env(self, bucket: str, prefix: str = "", *, urls: str = "gateway") -> dict[str, str]:
        """A gateway's settings for this server (path-style: loopback has no bucket DNS names)."""
        return {
            "IMAGERELAY_IMAGE_STORE": "s3",
            "IMAGERELAY_IMAGE_STORE_S3_BUCKET": bucket,
            "IMAGERELAY_IMAGE_STORE_S3_PREFIX": prefix,
            "IMAGERELAY_IMAGE_STORE_S3_REGION": REGION,
            "IMAGERELAY_IMAGE_STORE_S3_ENDPOINT_URL": self.endpoint_url,
            "IMAGERELAY_IMAGE_STORE_S3_ADDRESSING_STYLE": "path",
            "IMAGERELAY_IMAGE_STORE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "IMAGERELAY_IMAGE_STORE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "IMAGERELAY_IMAGE_URLS": urls,
        }


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    program = [str(exe)] if exe.exists() else [shutil.which("moto_server") or "moto_server"]
    return [*program, "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def run_s3_server(log_dir: Path | None = None) -> Iterator[S3Server]:
    port = free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="moto-"))
    log_path = log_dir / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_moto_command(port), stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(endpoint + "/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield S3Server(endpoint, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server for the session; each test makes its own bucket."""
    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
