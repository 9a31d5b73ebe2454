"""Owner-only files and folders, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imagerelay.private_files import create_private_file, make_private_dir, touch_private, write_private


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_written_over_a_readable_one_becomes_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("old")
    assert mode(path) == 0o644
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600


def test_a_generated_key_is_created_once_even_by_racing_writers(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        seen = set(pool.map(lambda i: create_private_file(path, f"key-{i}".encode()), range(32)))
    assert len(seen) == 1 and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]  # no file left aside


def test_dirs_and_touched_files(tmp_path: Path) -> None:
    folder = make_private_dir(tmp_path / "a" / "data")
    assert mode(folder) == 0o700
    touch_private(folder / "db")
    assert mode(folder / "db") == 0o600
    (folder / "kept").write_text("x")
    touch_private(folder / "kept")  # an existing file keeps its mode and content
    assert mode(folder / "kept") == 0o644 and (folder / "kept").read_text() == "x"
