"""``local``: one folder per area under the data directory (a single machine's store).

A file expires ``lifetime_s`` after its mtime, and is written with the mtime that makes
that its ``expires_at``: the layout and rule of releases before the pluggable store, so
files they wrote keep their lifetimes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path, PurePosixPath

import anyio

from imagerelay.blobs import CHUNK_BYTES, Blob, BlobMissing
from imagerelay.private_files import make_private_dir, private_opener


class LocalBlobs:
    def __init__(self, root: Path, lifetime_s: float) -> None:
        self.root = root
        self.lifetime_s = lifetime_s
        make_private_dir(root)

    def path_of(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError("not a store key")  # keys are the store's own; this is a bug guard
        return self.root.joinpath(*parts)

    async def put(
        self, key: str, chunks: Iterable[bytes], *, expires_at: float, content_type: str = "application/octet-stream"
    ) -> None:
        path = self.path_of(key)
        stamp = expires_at - self.lifetime_s
        tmp = path.with_name(path.name + ".part")

        def _write() -> None:
            if path.parent != self.root:
                make_private_dir(path.parent)
            try:
                with open(tmp, "wb", opener=private_opener) as out:
                    for chunk in chunks:
                        out.write(chunk)
                if abs(stamp - time.time()) > 1:  # kept longer (or shorter) than the area's lifetime
                    os.utime(tmp, (stamp, stamp))
                os.replace(tmp, path)  # readers never see a half-written file
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        await anyio.to_thread.run_sync(_write)

    async def open(self, key: str) -> Blob:
        path = self.path_of(key)
        try:
            size = (await anyio.Path(path).stat()).st_size
        except (FileNotFoundError, NotADirectoryError):
            raise BlobMissing(key) from None
        if not path.is_file():
            raise BlobMissing(key)

        async def chunks() -> AsyncIterator[bytes]:
            # Opened on the first read: a caller that serves the path itself opens nothing.
            async with await anyio.open_file(path, "rb") as handle:
                while chunk := await handle.read(CHUNK_BYTES):
                    yield chunk

        return Blob(size=size, chunks=chunks(), path=path)

    async def read(self, key: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync(self.path_of(key).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobMissing(key) from None

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path_of(key).unlink(missing_ok=True))

    async def delete_prefix(self, prefix: str) -> int:
        """Only folder prefixes ("<job id>/") are meaningful here: the folder goes."""
        folder = self.path_of(prefix.rstrip("/"))

        def _remove() -> int:
            try:
                count = sum(1 for _ in folder.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                return 0
            shutil.rmtree(folder, ignore_errors=True)
            return count

        return await anyio.to_thread.run_sync(_remove)

    async def expire(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - self.lifetime_s
        return await anyio.to_thread.run_sync(self._expire, cutoff)

    def _expire(self, cutoff: float) -> int:
        removed = 0
        for folder, _dirs, files in os.walk(self.root, topdown=False):
            for name in files:
                try:
                    path = os.path.join(folder, name)
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
            if folder != str(self.root):
                try:
                    if not os.listdir(folder) and os.stat(folder).st_mtime < cutoff:
                        os.rmdir(folder)  # an emptied job folder; a fresh one may be filling
                except OSError:
                    continue
        return removed

    async def folders(self, written_before: float) -> list[str]:
        def _old() -> list[str]:
            with os.scandir(self.root) as entries:
                return [e.name for e in entries if e.is_dir() and e.stat().st_mtime < written_before]

        return await anyio.to_thread.run_sync(_old)

    async def presigned_url(self, key: str, expires_in_s: int, content_type: str) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
