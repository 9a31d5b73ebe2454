"""Memory and time of one big object through the ``s3`` (moto_server on loopback) and
``database`` (SQLite) image stores. The tracemalloc peaks stay flat as the object grows,
because writes and reads stream: ``MIB=25`` and ``MIB=64`` give the same peaks.

Run: ``PYTHONPATH=. MIB=64 .venv/bin/python bench/store_memory.py``
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import tracemalloc
from collections.abc import Iterator

from imagerelay.blobs import BlobStore
from imagerelay.blobs.database import DatabaseBlobs
from imagerelay.blobs.s3 import S3Blobs, S3Connection, S3Settings
from imagerelay.storage.db import create_engine
from imagerelay.storage.migrate import prepare
from tests.support.s3 import S3Server, run_s3_server

SIZE = int(os.environ.get("MIB", "25")) * 1024 * 1024
SLICE = 3 * 1024 * 1024  # what put_b64 yields: one decoded 4 MB base64 slice


def chunks() -> Iterator[bytes]:
    block = os.urandom(SLICE)
    sent = 0
    while sent < SIZE:
        n = min(SLICE, SIZE - sent)
        sent += n
        yield block[:n]


async def measure(area: BlobStore, label: str) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    await area.put("big.png", chunks(), expires_at=time.time() + 60)
    put_s = time.perf_counter() - started
    _, put_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    blob = await area.open("big.png")
    started = time.perf_counter()
    received = 0
    async for chunk in blob.chunks:
        received += len(chunk)
    get_s = time.perf_counter() - started
    _, get_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert received == SIZE
    print(
        f"{label}: {SIZE >> 20} MiB put {put_s:.2f} s, peak {put_peak / 2**20:.1f} MiB "
        f"(with the 3 MiB source slice); streamed read {get_s:.2f} s, peak {get_peak / 2**20:.1f} MiB"
    )


async def main(server: S3Server, tmp: str) -> None:
    conn = S3Connection(
        S3Settings(
            bucket=server.create_bucket(),
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            access_key_id="k",
            secret_access_key="s",
            addressing_style="path",
        )
    )
    await measure(S3Blobs(conn, "images", 100), "s3 (moto_server)")
    await conn.aclose()
    url = f"sqlite:///{tmp}/store.db"
    prepare(url)
    engine = create_engine(url)
    await measure(DatabaseBlobs(engine, "images", 100), "database (SQLite)")
    await engine.dispose()


if __name__ == "__main__":
    with run_s3_server() as s3:
        asyncio.run(main(s3, tempfile.mkdtemp()))
