"""Where the gateway keeps bytes that outlive a call: URL images, job results, job inputs.

One small interface, :class:`BlobStore`, with three backends chosen by
``IMAGERELAY_IMAGE_STORE`` (docs/storage.md):

- ``local``: files under the data directory (one machine, today's layout);
- ``s3``: any S3-compatible object store, so every host of a fleet sees the same objects;
- ``database``: rows in the gateway's own database (PostgreSQL or SQLite), for small
  fleets without object storage.

Each store holds one *area* of objects (URL images, job results, job inputs) and each
object is written with the time it may go (``expires_at``). :meth:`BlobStore.expire`
deletes it after that time and at the latest ``lifetime_s`` after it was written:
``local`` and ``database`` keep each object's own time (a file's mtime, a column), ``s3``
ages objects by ``LastModified`` against the area's lifetime, so no per-object metadata
has to be read while sweeping and a bucket lifecycle rule (a prefix and an age) can do
the same work (docs/storage.md).

Failures of the store itself (unreachable, denied, full) are :class:`StoreUnavailable`, a
clean 503 for the client; the backend logs what went wrong without credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagerelay.errors import ApiError

__all__ = ["Blob", "BlobMissing", "BlobStore", "StoreUnavailable", "CHUNK_BYTES", "rechunked"]

# Streaming granularity on every backend: big enough for few round trips, small enough
# that ten 4K images (~25 MB each) in flight never sit in memory whole.
CHUNK_BYTES = 1024 * 1024


class BlobMissing(Exception):
    """No such object (never written, deleted, or expired)."""


class StoreUnavailable(ApiError):
    """The image store failed (unreachable, denied, out of space): a 503, retryable."""

    status = 503
    type = "server_error"
    code = "image_store_unavailable"

    def __init__(self, message: str = "The image store is unavailable; retry the request shortly.") -> None:
        super().__init__(message)


def rechunked(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Pieces of exactly ``size`` bytes (the last one shorter, none for no bytes), whatever
    the producer yields: a 50 MB input image becomes pieces without a second whole copy.
    Views of the producer's chunks wait in a list and are joined once per piece, so
    nothing is copied twice and nothing is kept while the piece is sent."""
    pending: list[memoryview] = []
    filled = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(size - filled, len(view))
            pending.append(view[:take])
            filled += take
            view = view[take:]
            if filled == size:
                piece = b"".join(pending)
                pending.clear()
                filled = 0
                yield piece
    if pending:
        yield b"".join(pending)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


@dataclass(slots=True)
class Blob:
    """An object opened for reading: its size when the backend knows it up front, and its
    bytes as chunks (read lazily; ``aclose`` releases what the read holds)."""

    size: int | None
    chunks: AsyncIterator[bytes] = field(default_factory=_no_chunks)
    path: Path | None = None  # local files: served with sendfile, ranges and validators

    async def aclose(self) -> None:
        closer = getattr(self.chunks, "aclose", None)
        if closer is not None:
            await closer()

    async def read_all(self) -> bytes:
        try:
            return b"".join([c async for c in self.chunks])
        finally:
            await self.aclose()


class BlobStore(Protocol):
    """One area of objects with one lifetime. Keys are the store's own ("name.png",
    "imgjob_x/0.bin"): never a client's string unchecked."""

    lifetime_s: float

    async def put(
        self, key: str, chunks: Iterable[bytes], *, expires_at: float, content_type: str = "application/octet-stream"
    ) -> None:
        """Write an object from chunks produced lazily (a big image is never whole in
        memory twice), to be kept until ``expires_at``; readers never see it half-written."""

    async def open(self, key: str) -> Blob:
        """Open an object for streaming; :class:`BlobMissing` if there is none."""

    async def read(self, key: str) -> bytes:
        """The whole object; :class:`BlobMissing` if there is none."""

    async def delete(self, key: str) -> None:
        """Delete an object (no error if it is gone already)."""

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (a job's inputs)."""

    async def expire(self, now: float | None = None) -> int:
        """Delete objects past their time; returns how many."""

    async def folders(self, written_before: float) -> list[str]:
        """Top-level folders ("<job id>" of "<job id>/0.bin") holding nothing written
        since ``written_before``: what a crash may have left behind."""

    async def presigned_url(self, key: str, expires_in_s: int, content_type: str) -> str | None:
        """A URL of the store itself, valid ``expires_in_s``; None when the backend has none."""

    async def aclose(self) -> None:
        """Release connections (the last call on a store)."""
