"""Files and folders only the gateway's own user may read.

The data directory holds the database (balances, token hashes, encrypted upstream
keys), the keys that sign image URLs and encrypt upstream keys, and the customers'
images. Under the usual umask 022 Python would create all of them world-readable, so
everything here is created 0700 (folders) or 0600 (files) whatever the umask. Files
that already exist keep the mode their operator gave them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "make_private_dir",
    "private_opener",
    "touch_private",
    "write_private",
]


def make_private_dir(path: Path) -> Path:
    """``mkdir -p``; the folder itself (if it is new) is 0700, missing parents are not."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def private_opener(path: str, flags: int) -> int:
    """``open(..., opener=private_opener)``: a file it creates is 0600 from its first byte."""
    return os.open(path, flags, PRIVATE_FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write (or overwrite) a file readable by its owner only."""
    with open(path, "wb", opener=private_opener) as out:
        os.fchmod(out.fileno(), PRIVATE_FILE_MODE)  # it may have existed with a wider mode
        out.write(data)


def touch_private(path: Path) -> None:
    """Create an empty 0600 file unless it exists (SQLite then gives its -wal and -shm
    files the database file's mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))


def create_private_file(path: Path, data: bytes) -> bytes:
    """Create ``path`` with ``data`` unless it exists; return what it holds.

    Several worker processes may start at once and each generate a key: the file appears
    whole (written aside, then hard-linked, which fails if the name exists), so they all
    end up reading the same one."""
    if not path.exists():
        aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        write_private(aside, data)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink()
    return path.read_bytes()
