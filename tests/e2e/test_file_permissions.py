"""The data directory and what the gateway writes into it are its owner's only (issue 10),
under the usual umask 022: folders 0700, the database with its WAL and SHM, keys, demo
tokens and stored images 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import backend
from tests.support.gateway import run_gateway


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@backend.sqlite_only("the modes of the SQLite database file and its WAL/SHM files")
def test_a_running_gateway_keeps_its_files_private(tmp_path: Path) -> None:
    data = tmp_path / "data"  # does not exist: the gateway creates it
    with umask(0o022), run_gateway(tmp_path, extra_args=["--data-dir", str(data)]) as gw:
        r = httpx.post(
            gw.v1 + "/images/generations",
            timeout=60,
            headers={"Authorization": f"Bearer {gw.tokens['default']}"},
            json={"model": "gpt-image-2", "prompt": "a kite", "response_format": "url"},
        )
        assert r.status_code == 200, r.text
        image = data / "images" / r.json()["data"][0]["url"].split("/")[-1].split("?")[0]
        assert (data / "imagerelay.db-wal").exists() and (data / "imagerelay.db-shm").exists()
        modes = {
            path.name: mode(path)
            for path in (
                data / "imagerelay.db",
                data / "imagerelay.db-wal",
                data / "imagerelay.db-shm",
                data / "secret.key",
                data / "url-signing.key",
                data / "webhook.key",
                data / "demo-tokens.json",
                tmp_path / "demo-tokens-out.json",
                image,
            )
        }
        assert modes == dict.fromkeys(modes, 0o600)
        assert mode(data) == mode(data / "images") == 0o700


@backend.sqlite_only("the mode of the SQLite database file a command creates")
def test_an_admin_command_on_a_new_data_dir_creates_it_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    with umask(0o022):
        result = subprocess.run(
            [sys.executable, "-m", "imagerelay", "users", "create", "alice", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert mode(data) == 0o700
    assert mode(data / "imagerelay.db") == mode(data / "secret.key") == mode(data / "url-signing.key") == 0o600
