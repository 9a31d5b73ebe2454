"""The gateway's own image store behind ``response_format=url``.

GPT image upstreams only return base64, so for ``url`` the gateway writes the image
to local disk and hands out a URL it serves itself, signed with HMAC-SHA256 over
``(image id, expiry)`` so it cannot be guessed, altered or used after it expires.
Image ids are random (not content hashes) so a URL reveals nothing about the image.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import anyio

from imagerelay.domain.b64 import B64Payload, decode_image_b64, sniff_format
from imagerelay.private_files import make_private_dir, private_opener

_EXT = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
# Decoded slices stay under glibc's mmap threshold (pinned at 1 MB, memory.py): from the
# heap they reuse warm memory; 3 MB outputs were fresh mappings, faulted in and zeroed
# by the kernel on every slice (a fifth of a 4K url call's CPU in perf).
_DECODE_SLICE = 512 * 1024
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# The shape of what signed_url hands out, ASCII only: a url-safe random id and an
# extension (no "/" and no leading "."), a unix time with room to spare, a hex SHA-256.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.(?:png|jpeg|webp)", re.ASCII)
_EXPIRES = re.compile(r"[0-9]{1,15}", re.ASCII)
_SIG = re.compile(r"[0-9a-f]{64}", re.ASCII)


class ImageStore:
    def __init__(self, root: Path, signing_key: bytes, ttl_s: int) -> None:
        self.root = root
        self._key = signing_key
        self.ttl_s = ttl_s
        make_private_dir(root)

    def _sign(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    async def put(self, data: bytes, fmt: str) -> str:
        """Store the image; returns its file name (``<random id>.<ext>``)."""
        return await self._store(fmt, lambda out: out.write(data))

    async def put_b64(self, clean_b64: B64Payload) -> str:
        """Decode and store, a few MB at a time: a 4K image is ~25 MB decoded, and eight
        of them in flight would otherwise be 200 MB of short-lived copies."""

        def decode_into(out: BinaryIO) -> None:
            for start in range(0, len(clean_b64), _DECODE_SLICE):  # a multiple of 4: slices decode alone
                out.write(decode_image_b64(clean_b64[start:start + _DECODE_SLICE]))

        return await self._store(sniff_format(decode_image_b64(clean_b64[:24])) or "png", decode_into)

    async def _store(self, fmt: str, write: Callable[[BinaryIO], object]) -> str:
        """Write a new image file off the event loop; returns its name."""
        name = f"{secrets.token_urlsafe(18)}.{_EXT[fmt]}"
        path = self.root / name
        tmp = self.root / (name + ".part")

        def _write() -> None:
            try:
                with open(tmp, "wb", opener=private_opener) as out:
                    write(out)
                os.replace(tmp, path)  # readers never see a half-written file
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        await anyio.to_thread.run_sync(_write)
        return name

    def signed_url(self, base_url: str, name: str, now: float | None = None, not_after: float | None = None) -> str:
        """A URL valid for the URL lifetime, and never past ``not_after`` (a job's expiry)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        if not_after is not None:
            expires = min(expires, int(not_after))
        return f"{base_url.rstrip('/')}/v1/files/images/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def resolve(self, name: str, expires: str, sig: str, now: float | None = None) -> Path | None:
        """The file for a valid, unexpired signature; None otherwise (one answer for all failures).

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
        path = self.root / name
        return path if path.is_file() else None

    @property
    def _kept_s(self) -> float:
        # The URL lifetime plus a margin for clocks of hosts sharing the store (at most a
        # minute, and no longer than the lifetime itself, so short lifetimes stay short).
        return self.ttl_s + min(60, self.ttl_s)

    async def keep_until(self, name: str, until: float) -> None:
        """Keep an image at least until ``until`` (a job's result lives as long as the job).

        The purge ages a file by its mtime, so the mtime is moved to where a file
        written then would age out at ``until``: no index to keep in step with the disk,
        and every replica sharing the store sees the same lifetime.
        """
        stamp = until - self._kept_s
        await anyio.to_thread.run_sync(os.utime, self.root / name, (stamp, stamp))

    def purge_expired(self, now: float | None = None) -> int:
        """Delete files past their lifetime (no URL for them can still be valid)."""
        cutoff = (time.time() if now is None else now) - self._kept_s
        removed = 0
        for entry in os.scandir(self.root):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
