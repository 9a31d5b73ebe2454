from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support import backend
from tests.support.gateway import Gateway, run_gateway
from tests.support.s3 import s3_server  # noqa: F401 - the S3 stand-in fixture, for every test


def pytest_report_header() -> str:
    return f"imagerelay test backend: {backend.BACKEND} (IMAGERELAY_TEST_BACKEND)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The PostgreSQL pass skips the tests that choose their database themselves: the
    SQLite pass already runs each of their backends (SQLite and PostgreSQL)."""
    if not backend.on_postgres():
        return
    skip = pytest.mark.skip(reason="picks its database itself: the SQLite pass runs it on both backends")
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v in backend.OWN_BACKEND_PARAMS for v in params.values()):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _backend_databases() -> Iterator[None]:
    """At the end of the session, drop what the PostgreSQL pass still holds (module gateways')."""
    yield
    backend.release(everything=True)


@pytest.fixture(autouse=True)
def _backend_databases_of_test() -> Iterator[None]:
    """Each test's gateways get fresh databases and Redis prefixes; dropped when it ends."""
    since = backend.checkpoint()
    yield
    backend.release(since)


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
