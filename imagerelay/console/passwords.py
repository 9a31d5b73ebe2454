"""Password hashing for console accounts: scrypt from the standard library.

scrypt (RFC 7914) is memory-hard, so guessing on GPUs costs what it costs here; the
standard library's ``hashlib.scrypt`` needs no extra dependency. Parameters are stored
with each hash so they can be raised later without invalidating old hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1  # 16 MiB per hash, 0.3-0.4 s measured on the shared 2-core test machine
_DKLEN = 32
MIN_LENGTH = 10
MAX_LENGTH = 1024  # bounds the work one request can ask for


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
    return hashlib.scrypt(password[:MAX_LENGTH].encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=n * r * 128 * 2, dklen=_DKLEN)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")
