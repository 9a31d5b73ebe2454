"""Normalise upstream base64 image payloads.

Upstreams sometimes send ``data:image/png;base64,`` prefixes or drop ``=`` padding.
Clients always get clean, padded base64 of a decodable image. The common case (an
already clean string) is checked without decoding the whole image: we validate the
alphabet with one C-level ``translate`` pass and decode only the head to sniff the
magic bytes, so a 33 MB 4K answer is not copied more than once.
"""

from __future__ import annotations

import base64
import binascii
import re

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
}


class InvalidImagePayload(ValueError):
    """The upstream sent something that is not base64 of a PNG, JPEG or WebP image."""


def sniff_format(head: bytes) -> str | None:
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def normalize_b64(value: object) -> tuple[str, str]:
    """Return ``(clean_padded_b64, format)`` or raise :class:`InvalidImagePayload`."""
    if not isinstance(value, str) or not value:
        raise InvalidImagePayload("b64_json is missing or not a string")
    s = value
    prefixed = s.startswith("data:")
    if prefixed:
        m = _DATA_URL.match(s)
        if not m:
            raise InvalidImagePayload("malformed data: URL")
        s = s[m.end() :]
    # CPython returns the same object when nothing is stripped: no copy on the clean path.
    s = s.rstrip("=")
    if not s.isascii():
        raise InvalidImagePayload("non-ASCII characters in base64")
    if not _in_alphabet(s):
        # Rare path: wrapped lines or url-safe alphabet. Normalise by a full round trip.
        raw = s.encode("ascii")
        try:
            decoded = base64.b64decode(
                raw.replace(b"-", b"+").replace(b"_", b"/").translate(None, b" \r\n\t")
                + b"=" * 3,
                validate=False,
            )
        except (binascii.Error, ValueError) as exc:
            raise InvalidImagePayload(f"undecodable base64: {exc}") from None
        fmt = sniff_format(decoded[:16])
        if fmt is None:
            raise InvalidImagePayload("base64 does not decode to a PNG, JPEG or WebP image")
        return base64.b64encode(decoded).decode("ascii"), fmt
    if len(s) % 4 == 1:
        raise InvalidImagePayload("base64 has an impossible length")
    pad = (4 - len(s) % 4) % 4
    try:
        head = base64.b64decode(s[:24], validate=True)
    except binascii.Error as exc:  # pragma: no cover - alphabet already checked
        raise InvalidImagePayload(f"undecodable base64: {exc}") from None
    fmt = sniff_format(head)
    if fmt is None:
        raise InvalidImagePayload("base64 does not decode to a PNG, JPEG or WebP image")
    if not prefixed and len(value) - len(s) == pad:
        return value, fmt  # already clean: hand back the very same string
    return s + "=" * pad, fmt


_SLICE = 1 << 20


def _in_alphabet(s: str) -> bool:
    """True when every character is in the standard base64 alphabet.

    Checked 1 MB at a time so a 33 MB answer is never copied whole."""
    for start in range(0, len(s), _SLICE):
        if s[start:start + _SLICE].encode("ascii").translate(None, _B64_ALPHABET):
            return False
    return True


def decode_image_b64(clean_b64: str) -> bytes:
    # binascii reads an ASCII str in place; base64.b64decode would first copy it to bytes.
    return binascii.a2b_base64(clean_b64)
