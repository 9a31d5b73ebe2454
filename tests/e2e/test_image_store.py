"""The image store's own contract (imagerelay/blobs), the same tests on every backend:
``local`` files, ``s3`` against a real S3-compatible server on loopback (moto_server,
tests/support/s3.py), and ``database`` on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pybase64
import pytest

from imagerelay.blobs import CHUNK_BYTES, BlobMissing, BlobStore, StoreUnavailable
from imagerelay.blobs.areas import StoreAreas, build_areas
from imagerelay.blobs.s3 import PART_BYTES
from imagerelay.config import Settings
from imagerelay.imagestore import ImageStore
from imagerelay.storage.db import create_engine
from imagerelay.storage.migrate import prepare
from tests.conftest import png_bytes
from tests.support.s3 import S3Server
from tests.support.services import drop_postgres_database, fresh_postgres_database

BACKENDS = ["local", "s3", "database-sqlite", "database-postgres"]
URL_TTL_S = 100
JOB_TTL_S = 1000


@dataclass
class Rig:
    backend: str
    areas: StoreAreas
    store: ImageStore
    settings: Settings


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    backend: str = request.param
    base = {
        "data_dir": tmp_path / "data",
        "image_url_ttl_s": URL_TTL_S,
        "job_ttl_s": JOB_TTL_S,
        "url_signing_key": "k" * 32,
    }
    if backend == "local":
        yield Settings(**base)
    elif backend == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        env = server.env(server.create_bucket(), prefix="fleet/")
        yield Settings(**base, **{k.removeprefix("IMAGERELAY_").lower(): v for k, v in env.items()})
    elif backend == "database-sqlite":
        yield Settings(**base, image_store="database")
    else:
        url, name = fresh_postgres_database()
        try:
            yield Settings(**base, image_store="database", database_url=url)
        finally:
            drop_postgres_database(name)


@pytest.fixture
async def rig(backend_settings: Settings) -> AsyncIterator[Rig]:
    backend_settings.ensure_data_dir()
    url = backend_settings.resolved_database_url()
    prepare(url)
    engine = create_engine(url)
    areas = build_areas(backend_settings, engine)
    store = ImageStore(
        areas,
        backend_settings.signing_key(),
        backend_settings.image_url_ttl_s,
        presigned=backend_settings.image_urls == "presigned",
    )
    try:
        yield Rig(backend_settings.image_store, areas, store, backend_settings)
    finally:
        await areas.aclose()
        await engine.dispose()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _streamed(area: BlobStore, key: str) -> tuple[int | None, list[bytes]]:
    blob = await area.open(key)
    try:
        return blob.size, [chunk async for chunk in blob.chunks]
    finally:
        await blob.aclose()


async def test_put_read_and_stream_a_big_object_in_bounded_chunks(rig: Rig) -> None:
    # Bigger than an S3 part and than several database rows, and not a multiple of either.
    data = os.urandom(PART_BYTES + 3 * CHUNK_BYTES + 12345)
    await rig.areas.inputs.put("imgjob_a/0.bin", _pieces(data, 3 * 1024 * 1024 + 7), expires_at=time.time() + 60)
    assert await rig.areas.inputs.read("imgjob_a/0.bin") == data
    size, chunks = await _streamed(rig.areas.inputs, "imgjob_a/0.bin")
    assert size == len(data)
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= CHUNK_BYTES
    # An input image arrives as one big bytes object: written in pieces all the same.
    await rig.areas.inputs.put("imgjob_a/1.bin", iter((data,)), expires_at=time.time() + 60)
    assert await rig.areas.inputs.read("imgjob_a/1.bin") == data


async def test_small_and_empty_objects(rig: Rig) -> None:
    await rig.areas.images.put("small.png", iter((b"ab", b"cd")), expires_at=time.time() + 60)
    await rig.areas.images.put("empty.png", iter(()), expires_at=time.time() + 60)
    assert await rig.areas.images.read("small.png") == b"abcd"
    assert await rig.areas.images.read("empty.png") == b""
    # A rewrite replaces the object whole.
    await rig.areas.images.put("small.png", iter((b"z",)), expires_at=time.time() + 60)
    assert await rig.areas.images.read("small.png") == b"z"


async def test_missing_objects_and_delete(rig: Rig) -> None:
    with pytest.raises(BlobMissing):
        await rig.areas.images.open("never-written.png")
    with pytest.raises(BlobMissing):
        await rig.areas.images.read("never-written.png")
    await rig.areas.images.delete("never-written.png")  # no error
    await rig.areas.images.put("x.png", iter((b"1",)), expires_at=time.time() + 60)
    await rig.areas.images.delete("x.png")
    with pytest.raises(BlobMissing):
        await rig.areas.images.read("x.png")


async def test_delete_prefix_takes_one_jobs_inputs_only(rig: Rig) -> None:
    expires = time.time() + 60
    for key in ("imgjob_a/0.bin", "imgjob_a/images.json", "imgjob_ab/0.bin", "imgjob_b/0.bin"):
        await rig.areas.inputs.put(key, iter((key.encode(),)), expires_at=expires)
    assert await rig.areas.inputs.delete_prefix("imgjob_a/") == 2
    assert await rig.areas.inputs.delete_prefix("imgjob_a/") == 0
    for gone in ("imgjob_a/0.bin", "imgjob_a/images.json"):
        with pytest.raises(BlobMissing):
            await rig.areas.inputs.read(gone)
    assert await rig.areas.inputs.read("imgjob_ab/0.bin") == b"imgjob_ab/0.bin"
    assert await rig.areas.inputs.read("imgjob_b/0.bin") == b"imgjob_b/0.bin"


async def test_folders_names_what_nothing_wrote_since(rig: Rig) -> None:
    await rig.areas.inputs.put("imgjob_c/0.bin", iter((b"c",)), expires_at=time.time() + 60)
    await rig.areas.inputs.put("imgjob_d/0.bin", iter((b"d",)), expires_at=time.time() + 60)
    assert await rig.areas.inputs.folders(written_before=time.time() - 60) == []
    assert sorted(await rig.areas.inputs.folders(written_before=time.time() + 60)) == ["imgjob_c", "imgjob_d"]


async def test_expiry_sweep_on_every_area(rig: Rig) -> None:
    now = time.time()
    await rig.areas.images.put("url.png", iter((b"u",)), expires_at=now + URL_TTL_S)
    await rig.areas.inputs.put("imgjob_e/0.bin", iter((b"i",)), expires_at=now + JOB_TTL_S)
    assert await rig.areas.expire(now) == 0
    assert await rig.areas.images.read("url.png") == b"u"
    # Past the URL lifetime (and its clock margin): the URL image goes, the job's input stays.
    assert await rig.areas.expire(now + 2 * URL_TTL_S + 1) == 1
    with pytest.raises(BlobMissing):
        await rig.areas.images.read("url.png")
    assert await rig.areas.inputs.read("imgjob_e/0.bin") == b"i"
    assert await rig.areas.expire(now + JOB_TTL_S + 2 * URL_TTL_S + 1) == 1
    with pytest.raises(BlobMissing):
        await rig.areas.inputs.read("imgjob_e/0.bin")


async def test_image_store_signs_serves_and_expires(rig: Rig) -> None:
    png = png_bytes(64, 48)
    name = await rig.store.put_b64(pybase64.b64encode(png).decode())  # type: ignore[arg-type]
    url = rig.store.signed_url("http://gw", name)
    query = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))
    assert rig.store.resolve(name, query["expires"], query["sig"]) == name
    assert rig.store.resolve(name, query["expires"], "0" * 64) is None  # bad signature
    assert rig.store.resolve(name, str(int(query["expires"]) + 1), query["sig"]) is None  # altered expiry
    assert rig.store.resolve(name, query["expires"], query["sig"], now=time.time() + URL_TTL_S + 1) is None
    assert await rig.store.read(name) == png
    until = time.time() + JOB_TTL_S
    result = await rig.store.put(png, "png", until=until)
    assert result.startswith("job-")
    await rig.store.purge_expired(time.time() + 2 * URL_TTL_S + 1)
    with pytest.raises(BlobMissing):
        await rig.store.read(name)
    assert await rig.store.read(result) == png  # a job's result outlives the URL lifetime
    await rig.store.purge_expired(until + 2 * URL_TTL_S + 1)
    with pytest.raises(BlobMissing):
        await rig.store.read(result)


async def test_presigned_urls_are_the_stores_own(rig: Rig) -> None:
    png = png_bytes(32, 32)
    name = await rig.store.put(png, "png")
    rig.store.presigned = True
    url = await rig.store.url("http://gw", name)
    if rig.backend != "s3":
        assert url.startswith("http://gw/v1/files/images/")  # no presigning there: the gateway serves
        return
    endpoint = rig.settings.image_store_s3_endpoint_url
    assert endpoint and url.startswith(endpoint) and "X-Amz-Signature=" in url
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    # The URL lives as long as a gateway URL would (the store enforces it; moto does not).
    assert "X-Amz-Expires=100" in url


async def test_s3_failures_are_clean_and_keep_credentials_out_of_logs(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = s3_server.env("no-such-bucket-here")
    settings = Settings(data_dir=tmp_path, **{k.removeprefix("IMAGERELAY_").lower(): v for k, v in env.items()})
    unreachable = Settings(
        data_dir=tmp_path,
        **{
            k.removeprefix("IMAGERELAY_").lower(): v
            for k, v in {**env, "IMAGERELAY_IMAGE_STORE_S3_ENDPOINT_URL": "http://127.0.0.1:9"}.items()
        },
    )
    caplog.set_level(logging.INFO)
    for config in (settings, unreachable):
        areas = build_areas(config, None)
        try:
            for attempt in (
                areas.images.put("a.png", iter((b"x",)), expires_at=time.time() + 60),
                areas.images.read("a.png"),
                areas.images.expire(),
                areas.check(),
            ):
                with pytest.raises(StoreUnavailable) as raised:
                    await attempt
                assert raised.value.status == 503 and raised.value.code == "image_store_unavailable"
        finally:
            await areas.aclose()
    logged = caplog.text
    assert "NoSuchBucket" in logged and "EndpointConnectionError" in logged
    assert env["IMAGERELAY_IMAGE_STORE_S3_SECRET_ACCESS_KEY"] not in logged
    assert env["IMAGERELAY_IMAGE_STORE_S3_ACCESS_KEY_ID"] not in logged
    assert "127.0.0.1:9" not in logged
