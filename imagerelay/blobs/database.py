"""``database``: objects as rows of the gateway's own database (PostgreSQL or SQLite), for
small fleets that share a database but no object store.

An object is ``CHUNK_BYTES`` rows (``blob_chunks``: area, key, seq), written in one
transaction (readers see all of it or none) and read one row per query, so neither a
write nor a download holds more than a chunk of a big image, and no database has to
return a 25 MB value in one piece. Each row carries the object's ``expires_at``; the
sweep is one indexed DELETE. Every host of a fleet sees the same rows.

Costs: images share the database's disk, its backups and its write lock (on SQLite a
25 MB write holds the lock for the write's duration), so this suits a few hosts and
moderate volumes; object storage (``s3``) suits more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.blobs import CHUNK_BYTES, Blob, BlobMissing, StoreUnavailable, rechunked
from imagerelay.storage.schema import blob_chunks

log = logging.getLogger("imagerelay.store")


class _failures:
    """A database failure becomes :class:`StoreUnavailable`, logged by type only."""

    def __init__(self, what: str) -> None:
        self.what = what

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SQLAlchemyError | OSError):
            log.error("image store (database): could not %s: %s", self.what, type(exc).__name__)
            raise StoreUnavailable() from None


class DatabaseBlobs:
    def __init__(self, engine: AsyncEngine, area: str, lifetime_s: float) -> None:
        self._engine = engine
        self.area = area
        self.lifetime_s = lifetime_s

    def _of(self, key: str) -> Any:
        return (blob_chunks.c.area == self.area) & (blob_chunks.c.key == key)

    async def put(
        self, key: str, chunks: Iterable[bytes], *, expires_at: float, content_type: str = "application/octet-stream"
    ) -> None:
        now = time.time()
        async with _failures("write an object"), self._engine.begin() as conn:
            await conn.execute(delete(blob_chunks).where(self._of(key)))  # a rewrite replaces
            wrote = False
            for seq, data in enumerate(rechunked(chunks, CHUNK_BYTES)):
                await conn.execute(
                    blob_chunks.insert().values(
                        area=self.area, key=key, seq=seq, data=data, created_at=now, expires_at=expires_at
                    )
                )
                wrote = True
            if not wrote:  # an empty object is still an object
                await conn.execute(
                    blob_chunks.insert().values(
                        area=self.area, key=key, seq=0, data=b"", created_at=now, expires_at=expires_at
                    )
                )

    async def open(self, key: str) -> Blob:
        async with _failures("read an object"), self._engine.connect() as conn:
            found = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(func.length(blob_chunks.c.data)), 0)).where(
                        self._of(key), blob_chunks.c.expires_at >= time.time()
                    )
                )
            ).one()
        count, size = int(found[0]), int(found[1])
        if count == 0:
            raise BlobMissing(key)

        async def chunks() -> AsyncIterator[bytes]:
            for seq in range(count):
                async with _failures("read an object"), self._engine.connect() as conn:
                    data = (
                        await conn.execute(select(blob_chunks.c.data).where(self._of(key), blob_chunks.c.seq == seq))
                    ).scalar()
                if data is None:
                    raise StoreUnavailable("The image was deleted while it was being read; request it again.")
                yield bytes(data)

        return Blob(size=size, chunks=chunks())

    async def read(self, key: str) -> bytes:
        return await (await self.open(key)).read_all()

    async def delete(self, key: str) -> None:
        async with _failures("delete an object"), self._engine.begin() as conn:
            await conn.execute(delete(blob_chunks).where(self._of(key)))

    async def delete_prefix(self, prefix: str) -> int:
        async with _failures("delete objects"), self._engine.begin() as conn:
            res = await conn.execute(
                delete(blob_chunks).where(
                    blob_chunks.c.area == self.area,
                    blob_chunks.c.key.startswith(prefix, autoescape=True),
                    blob_chunks.c.seq == 0,
                )
            )
            await conn.execute(
                delete(blob_chunks).where(
                    blob_chunks.c.area == self.area, blob_chunks.c.key.startswith(prefix, autoescape=True)
                )
            )
        return int(res.rowcount or 0)

    async def expire(self, now: float | None = None) -> int:
        cutoff = time.time() if now is None else now
        old = (blob_chunks.c.area == self.area) & (blob_chunks.c.expires_at < cutoff)
        async with _failures("expire objects"), self._engine.begin() as conn:
            counted = int(
                (
                    await conn.execute(select(func.count()).select_from(blob_chunks).where(old, blob_chunks.c.seq == 0))
                ).scalar()
                or 0
            )
            await conn.execute(delete(blob_chunks).where(old))
        return counted

    async def folders(self, written_before: float) -> list[str]:
        async with _failures("list objects"), self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(blob_chunks.c.key, func.max(blob_chunks.c.created_at))
                    .where(blob_chunks.c.area == self.area)
                    .group_by(blob_chunks.c.key)
                )
            ).all()
        newest: dict[str, float] = {}
        for key, at in rows:
            if "/" in key:
                folder = key.split("/", 1)[0]
                newest[folder] = max(newest.get(folder, at), at)
        return [folder for folder, at in newest.items() if at < written_before]

    async def presigned_url(self, key: str, expires_in_s: int, content_type: str) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
