"""The gateway's own image store behind ``response_format=url`` and job results.

GPT image upstreams only return base64, so for ``url`` the gateway stores the image
(in the configured :mod:`imagerelay.blobs` backend) and hands out either a URL it serves
itself, signed with HMAC-SHA256 over ``(image id, expiry)`` so it cannot be guessed,
altered or used after it expires, or (``IMAGERELAY_IMAGE_URLS=presigned``, s3 only) a
URL presigned by the object store. Image ids are random (not content hashes) so a URL
reveals nothing about the image. A job's result images are named ``job-<random>`` and
live in the results area, as long as the job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from imagerelay.blobs import Blob, BlobStore
from imagerelay.blobs.areas import StoreAreas, clock_margin_s
from imagerelay.blobs.local import LocalBlobs
from imagerelay.domain.b64 import B64Payload, decode_image_b64, sniff_format

_EXT = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
# Decoded slices stay under glibc's mmap threshold (pinned at 1 MB, memory.py): from the
# heap they reuse warm memory; 3 MB outputs were fresh mappings, faulted in and zeroed
# by the kernel on every slice (a fifth of a 4K url call's CPU in perf).
_DECODE_SLICE = 512 * 1024
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
RESULT_PREFIX = "job-"
# The shape of what signed_url hands out, ASCII only: a url-safe random id and an
# extension (no "/" and no leading "."), a unix time with room to spare, a hex SHA-256.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.(?:png|jpeg|webp)", re.ASCII)
_EXPIRES = re.compile(r"[0-9]{1,15}", re.ASCII)
_SIG = re.compile(r"[0-9a-f]{64}", re.ASCII)


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")


class ImageStore:
    def __init__(self, areas: StoreAreas, signing_key: bytes, ttl_s: int, *, presigned: bool = False) -> None:
        self.areas = areas
        self._key = signing_key
        self.ttl_s = ttl_s
        self.presigned = presigned

    @classmethod
    def local(cls, root: Path, signing_key: bytes, ttl_s: int) -> ImageStore:
        """One folder for URL images and job results, inputs beside it (tests and tools)."""
        images = LocalBlobs(root, ttl_s + clock_margin_s(ttl_s))
        inputs = LocalBlobs(root.with_name(root.name + "-inputs"), ttl_s)
        return cls(StoreAreas(images, images, inputs), signing_key, ttl_s)

    @property
    def inputs(self) -> BlobStore:
        return self.areas.inputs

    def _area(self, name: str) -> BlobStore:
        return self.areas.results if name.startswith(RESULT_PREFIX) else self.areas.images

    def _sign(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    @property
    def _kept_s(self) -> float:
        return self.ttl_s + clock_margin_s(self.ttl_s)

    async def put(self, data: bytes, fmt: str, *, until: float | None = None) -> str:
        """Store the image; returns its name (``<random id>.<ext>``). ``until``: a job's
        result, kept as long as the job (instead of the URL lifetime)."""
        return await self._store(fmt, iter((data,)), until)

    async def put_b64(self, clean_b64: B64Payload, *, until: float | None = None) -> str:
        """Decode and store, a few MB at a time: a 4K image is ~25 MB decoded, and eight
        of them in flight would otherwise be 200 MB of short-lived copies."""

        def decoded() -> Iterator[bytes]:
            for start in range(0, len(clean_b64), _DECODE_SLICE):  # a multiple of 4: slices decode alone
                yield decode_image_b64(clean_b64[start : start + _DECODE_SLICE])

        return await self._store(sniff_format(decode_image_b64(clean_b64[:24])) or "png", decoded(), until)

    async def _store(self, fmt: str, chunks: Iterator[bytes], until: float | None) -> str:
        while True:
            random_id = secrets.token_urlsafe(18)
            if not random_id.startswith(RESULT_PREFIX):  # 1 in 17 million: that name is a result's
                break
        name = f"{RESULT_PREFIX if until is not None else ''}{random_id}.{_EXT[fmt]}"
        # A result goes with its job: its URLs never outlive the job, so no clock margin.
        expires_at = time.time() + self._kept_s if until is None else until
        await self._area(name).put(name, chunks, expires_at=expires_at, content_type=MEDIA_TYPES[_EXT[fmt]])
        return name

    def _expires(self, now: float | None, not_after: float | None) -> int:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return min(expires, int(not_after)) if not_after is not None else expires

    def signed_url(self, base_url: str, name: str, now: float | None = None, not_after: float | None = None) -> str:
        """The gateway's URL, valid for the URL lifetime and never past ``not_after`` (a job's expiry)."""
        expires = self._expires(now, not_after)
        return f"{base_url.rstrip('/')}/v1/files/images/{name}?expires={expires}&sig={self._sign(name, expires)}"

    async def url(self, base_url: str, name: str, not_after: float | None = None) -> str:
        """The URL handed to clients: the gateway's signed link, or the store's presigned one."""
        if self.presigned:
            now = time.time()
            presigned = await self._area(name).presigned_url(
                name, max(1, self._expires(now, not_after) - int(now)), media_type(name)
            )
            if presigned is not None:
                return presigned
        return self.signed_url(base_url, name, not_after=not_after)

    def resolve(self, name: str, expires: str, sig: str, now: float | None = None) -> str | None:
        """The image's name for a valid, unexpired signature; None otherwise (one answer for all failures).

        Every part comes from a URL anyone can send, so each is matched against the exact
        shape :meth:`signed_url` produces before it is used: ``str.isdigit`` would pass
        "²" and 5,000 digits on to ``int`` (which raises), and ``compare_digest`` raises
        on a non-ASCII ``str``."""
        if not (_NAME.fullmatch(name) and _EXPIRES.fullmatch(expires) and _SIG.fullmatch(sig)):
            return None
        exp = int(expires)
        if exp < (time.time() if now is None else now):
            return None
        if not hmac.compare_digest(self._sign(name, exp).encode(), sig.encode()):
            return None
        return name

    async def open(self, name: str) -> Blob:
        """Stream a stored image (:class:`~imagerelay.blobs.BlobMissing` when gone)."""
        return await self._area(name).open(name)

    async def read(self, name: str) -> bytes:
        return await self._area(name).read(name)

    async def purge_expired(self, now: float | None = None) -> int:
        """Delete what is past its lifetime in every area (no URL for it can still be valid)."""
        return await self.areas.expire(now)

    async def aclose(self) -> None:
        await self.areas.aclose()
