"""Normalise upstream base64 image payloads.

Upstreams sometimes send ``data:image/png;base64,`` prefixes or drop ``=`` padding.
Clients always get clean, padded base64 of a decodable image. The common case (an
already clean string) is checked without decoding the whole image: we validate the
alphabet with pybase64's SIMD decoder over 1 MB slices and decode only the head
to sniff the magic bytes, so a 33 MB 4K answer is never copied whole.

A payload is either a ``str`` (small answers, streamed events) or a ``memoryview``
of ASCII bytes cut straight out of the upstream's body (``upstreams/answer.py``);
everything here takes both and hands the clean case back as the very same object.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator

import pybase64

B64Payload = str | bytes | memoryview

_DATA_URL = re.compile(rb"^data:[\w.+/-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
}

_SLICE = 1 << 20


class InvalidImagePayload(ValueError):
    """The upstream sent something that is not base64 of a PNG, JPEG or WebP image."""


def sniff_format(head: bytes) -> str | None:
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def normalize_b64(value: object) -> tuple[B64Payload, str]:
    """Return ``(clean_padded_b64, format)`` or raise :class:`InvalidImagePayload`.

    A ``str`` comes back as a ``str`` (streamed events are serialised with orjson), a
    buffer as a buffer; either way the very same object when it was already clean.
    """
    if isinstance(value, str) and value:
        if not value.isascii():
            raise InvalidImagePayload("non-ASCII characters in base64")
        view = memoryview(value.encode("ascii"))
        clean, fmt = _normalize_buffer(view)
        if clean is view:
            return value, fmt
        return (clean if isinstance(clean, str) else bytes(clean).decode("ascii")), fmt
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
        return _normalize_buffer(value if isinstance(value, memoryview) else memoryview(value))
    raise InvalidImagePayload("b64_json is missing or not a string")


def _normalize_buffer(value: memoryview) -> tuple[B64Payload, str]:
    view = value
    prefixed = view[:5].tobytes() == b"data:"
    if prefixed:
        m = _DATA_URL.match(bytes(view[:256]))
        if not m:
            raise InvalidImagePayload("malformed data: URL")
        view = view[m.end() :]
    end = len(view)
    while end and view[end - 1] == 0x3D:  # '='
        end -= 1
    stripped = view[:end]
    if not _alphabet_only(stripped, end):
        return _round_trip(stripped.tobytes())
    fmt = _check_shape(stripped[:24].tobytes(), end)
    pad = -end % 4
    if not prefixed and len(view) - end == pad:
        return value, fmt  # already clean: the very same view, no copy
    return stripped.tobytes() + b"=" * pad, fmt


def _alphabet_only(payload: memoryview, length: int) -> bool:
    """True when unpadded base64 text holds only the standard alphabet.

    pybase64's validating decoder (SIMD) checks 1 MB slices several times faster than
    any stdlib primitive (``bytes.translate`` was ~10% of a small call's CPU); the
    decoded slices are thrown away.
    """
    whole = length - length % 4
    try:
        for start in range(0, whole, _SLICE):
            pybase64.b64decode(payload[start : min(start + _SLICE, whole)], validate=True)
        if whole < length:
            tail = payload[whole:length]
            text = tail.tobytes()
            pybase64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_shape(head: bytes, length: int) -> str:
    """The image format of a clean payload of ``length`` characters, from its head."""
    if length % 4 == 1:
        raise InvalidImagePayload("base64 has an impossible length")
    try:
        decoded = base64.b64decode(head + b"=" * (-len(head) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - alphabet already checked
        raise InvalidImagePayload(f"undecodable base64: {exc}") from None
    fmt = sniff_format(decoded)
    if fmt is None:
        raise InvalidImagePayload("base64 does not decode to a PNG, JPEG or WebP image")
    return fmt


def _round_trip(raw: bytes) -> tuple[B64Payload, str]:
    """Rare path: wrapped lines or the url-safe alphabet. Normalise by decoding fully."""
    if not raw.isascii():
        raise InvalidImagePayload("non-ASCII characters in base64")
    text = raw.replace(b"-", b"+").replace(b"_", b"/").translate(None, b" \r\n\t").rstrip(b"=")
    try:
        # validate=True: only line breaks and the url-safe alphabet are forgiven, not junk.
        decoded = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImagePayload(f"undecodable base64: {exc}") from None
    fmt = sniff_format(decoded[:16])
    if fmt is None:
        raise InvalidImagePayload("base64 does not decode to a PNG, JPEG or WebP image")
    return base64.b64encode(decoded).decode("ascii"), fmt


def payload_chunks(value: B64Payload, size: int = _SLICE) -> Iterator[bytes | memoryview]:
    """ASCII bytes of a payload in pieces of at most ``size``, without copying a view."""
    for start in range(0, len(value), size):
        piece = value[start : start + size]
        yield piece.encode("ascii") if isinstance(piece, str) else piece


def decode_image_b64(clean_b64: B64Payload) -> bytes:
    # pybase64 reads an ASCII str or a buffer in place, ~10x faster than binascii.
    return pybase64.b64decode(clean_b64, validate=True)


def decode_lenient(value: B64Payload) -> bytes:
    """Bytes of a possibly prefixed or unpadded payload (for transcoding before the check)."""
    data = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    if data.startswith(b"data:"):
        data = data.split(b",", 1)[-1]
    return base64.b64decode(data + b"=" * (-len(data) % 4))
