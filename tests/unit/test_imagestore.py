from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagerelay.blobs import BlobMissing
from imagerelay.imagestore import ImageStore


@pytest.mark.asyncio
async def test_sign_resolve_expire(tmp_path: Path) -> None:
    store = ImageStore.local(tmp_path / "images", b"k" * 32, ttl_s=100)
    name = await store.put(b"\x89PNG\r\n\x1a\nxyz", "png")
    url = store.signed_url("http://gw:1/", name, now=1000.0)
    assert url.startswith("http://gw:1/v1/files/images/")
    query = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))
    assert query["expires"] == "1100"
    assert store.resolve(name, query["expires"], query["sig"], now=1050) == name
    assert await store.read(name) == b"\x89PNG\r\n\x1a\nxyz"
    assert store.resolve(name, query["expires"], query["sig"], now=1101) is None  # expired
    assert store.resolve(name, "1200", query["sig"], now=1050) is None  # expiry altered
    flipped = ("1" if query["sig"][0] == "0" else "0") + query["sig"][1:]
    assert store.resolve(name, query["expires"], flipped, now=1050) is None
    assert store.resolve("../etc/passwd", query["expires"], query["sig"], now=1050) is None
    other = ImageStore.local(tmp_path / "images", b"j" * 32, ttl_s=100)
    assert other.resolve(name, query["expires"], query["sig"], now=1050) is None  # other key


@pytest.mark.asyncio
async def test_purge_expired(tmp_path: Path) -> None:
    store = ImageStore.local(tmp_path / "images", b"k" * 32, ttl_s=60)
    name = await store.put(b"x", "png")
    assert await store.purge_expired(now=time.time()) == 0
    assert await store.purge_expired(now=time.time() + 200) == 1
    assert not (tmp_path / "images" / name).exists()
    with pytest.raises(BlobMissing):
        await store.open(name)


@pytest.mark.asyncio
async def test_a_job_result_lives_until_its_job_ends(tmp_path: Path) -> None:
    store = ImageStore.local(tmp_path / "images", b"k" * 32, ttl_s=60)
    until = time.time() + 3600
    name = await store.put(b"x", "png", until=until)
    assert name.startswith("job-")
    assert await store.purge_expired(now=time.time() + 600) == 0  # past the URL lifetime
    assert await store.purge_expired(now=until + 1) == 1


def test_store_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from imagerelay.config import Settings

    with pytest.raises(ValidationError, match="IMAGERELAY_IMAGE_STORE_S3_BUCKET"):
        Settings(data_dir=tmp_path, image_store="s3")
    with pytest.raises(ValidationError, match="IMAGERELAY_IMAGE_STORE=s3"):
        Settings(data_dir=tmp_path, image_urls="presigned")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, image_store="ftp")
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    s3 = Settings(
        data_dir=tmp_path, image_store="s3", image_store_s3_bucket="b", image_store_s3_secret_access_key=secret
    )
    assert secret not in repr(s3) and secret not in str(s3.model_dump())


@pytest.mark.parametrize("sizes", [[], [0], [1], [7], [8], [9], [3, 3, 3], [20], [5, 0, 11, 2], [8, 8]])
def test_rechunked_pieces_are_exact_and_lose_nothing(sizes: list[int]) -> None:
    from imagerelay.blobs import rechunked

    produced = [bytes([i]) * n for i, n in enumerate(sizes)]
    pieces = list(rechunked(iter(produced), 8))
    assert b"".join(pieces) == b"".join(produced)
    assert all(len(p) == 8 for p in pieces[:-1]) and all(0 < len(p) <= 8 for p in pieces)
