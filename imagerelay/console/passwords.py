"""Password hashing for console accounts: scrypt from the standard library.

scrypt (RFC 7914) is memory-hard, so guessing on GPUs costs what it costs here; the
standard library's ``hashlib.scrypt`` needs no extra dependency. Parameters are stored
with each hash so they can be raised later without invalidating old hashes.

Hashing runs on :class:`Hasher`'s own few threads, never on asyncio's default executor:
a burst of sign-ins there would queue without bound in front of everything else that
uses it (DNS look-ups, file locks). Past its short waiting line a hash is refused with
:class:`HashingBusy` (503 + ``retry-after``) instead of waiting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from imagerelay.errors import ServerBusy

_T = TypeVar("_T")

N, R, P = 2**14, 8, 1  # 16 MiB per hash, 0.3-0.4 s measured on the shared 2-core test machine
_DKLEN = 32
MIN_LENGTH = 10
MAX_LENGTH = 1024  # bounds the work one request can ask for


class HashingBusy(ServerBusy):
    """Every hashing thread is busy and the waiting line is full."""

    def __init__(self) -> None:
        super().__init__("Too many sign-ins at once; try again in a moment.", headers={"retry-after": "1"})


class Hasher:
    """scrypt on ``threads`` threads of its own, with at most ``waiting`` hashes queued.

    The bound counts a hash from submission until its thread finishes it, so a caller
    who gives up does not free a place while its hash still runs."""

    def __init__(self, threads: int = 2, waiting: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scrypt")
        self._places = threading.BoundedSemaphore(threads + waiting)

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        return await self._run(verify_password, password, stored)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        if not self._places.acquire(blocking=False):
            raise HashingBusy()
        try:
            future: Future[_T] = self._pool.submit(fn, *args)
        except BaseException:
            self._places.release()
            raise
        future.add_done_callback(lambda _: self._places.release())  # run, failed or cancelled while queued
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, N, R, P)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; with no hash, the same work is done and
    the answer is no, so timing does not tell whether an account exists."""
    if stored is None:
        _scrypt(password, b"\0" * 16, N, R, P)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest + "==")
        actual = _scrypt(password, base64.b64decode(salt + "=="), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def password_problem(password: str, name: str = "") -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"The password needs at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"The password may have at most {MAX_LENGTH} characters."
    if name and password.lower() == name.lower():
        return "The password must differ from the user name."
    return None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password[:MAX_LENGTH].encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=n * r * 128 * 2, dklen=_DKLEN
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")
