from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.gateway import Gateway, run_gateway
from tests.support.s3 import s3_server  # noqa: F401 - the S3 stand-in fixture, for every test


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One real gateway process for the session, on embedded defaults with demo tokens."""
    with run_gateway(tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


def png_bytes(width: int = 256, height: int = 256, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def source_png(tmp_path: Path) -> Path:
    path = tmp_path / "source.png"
    path.write_bytes(png_bytes(512, 512))
    return path
