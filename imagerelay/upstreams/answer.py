"""Parse an upstream ``ImagesResponse`` without copying its images.

A 4K answer is a ~33 MB JSON body that is almost entirely one base64 string.
``orjson.loads`` would turn that string into a second 33 MB ``str`` (and cost
~1 ms per MB of CPU), only for the gateway to serialise it straight back out.
Here each ``"b64_json": "..."`` value is cut out of the raw body as a
``memoryview`` and only the small remainder (the skeleton) is parsed as JSON.

Why this is safe to hand-roll: the scan only *locates* candidate values; the
skeleton is parsed by orjson, and a candidate is accepted only if orjson finds
its placeholder exactly at ``data[i].b64_json``. Anything unusual (escapes in
the value, the key somewhere else, a placeholder that lands elsewhere) falls
back to a plain ``orjson.loads`` of the whole body. The cut-out values are not
JSON-validated here; the pool's base64 check (``normalize_b64``) is stricter
than JSON string rules (it admits only the base64 alphabet and a data-URL
prefix), so nothing that orjson would reject gets through.
"""

from __future__ import annotations

import itertools
import mmap
import secrets
from typing import Any

import orjson

# Below this the whole body is parsed normally: the copy is cheap and the scan is not free.
ZERO_COPY_MIN_BYTES = 32 * 1024
_KEY = b'"b64_json"'
_WHITESPACE = b" \t\r\n"
# Placeholders: random per process (an upstream cannot predict one), unique per answer.
_MARKER_PREFIX = "imagerelay" + secrets.token_hex(8)
_serial = itertools.count()


def parse_images_answer(raw: bytes | bytearray | mmap.mmap) -> Any:
    """The parsed body; ``data[i]["b64_json"]`` may be a ``memoryview`` into ``raw``.

    Raises ``orjson.JSONDecodeError`` for invalid JSON, like ``orjson.loads``.
    """
    if len(raw) < ZERO_COPY_MIN_BYTES:
        return _loads(raw)
    spans = _b64_spans(raw)
    if not spans:
        return _loads(raw)
    marker = f"{_MARKER_PREFIX}-{next(_serial)}-"
    pieces: list[bytes | memoryview] = []
    view = memoryview(raw)
    pos = 0
    for k, (start, end) in enumerate(spans):
        pieces.append(view[pos:start])
        pieces.append(f"{marker}{k}".encode())
        pos = end
    pieces.append(view[pos:])
    skeleton = b"".join(pieces)
    body = orjson.loads(skeleton)
    placed = _place(body, marker, [view[start:end] for start, end in spans])
    if placed is None:
        return _loads(raw)
    return placed


def _loads(raw: bytes | bytearray | mmap.mmap) -> Any:
    # orjson reads bytes, bytearray and memoryview; a mapped answer (transport.answer_buffer) through a view.
    return orjson.loads(raw if isinstance(raw, (bytes, bytearray)) else memoryview(raw))


def _b64_spans(raw: bytes | bytearray | mmap.mmap) -> list[tuple[int, int]]:
    """(start, end) of each ``"b64_json"`` string value's contents, or [] to fall back.

    Inside a JSON string a quote is always escaped, so ``"b64_json"`` followed by a
    colon can only be an object key; whether it is the key we want is checked later.
    """
    spans = []
    at = raw.find(_KEY)
    while at != -1:
        i = at + len(_KEY)
        while i < len(raw) and raw[i] in _WHITESPACE:
            i += 1
        if i >= len(raw) or raw[i] != 0x3A:  # ':' - a value "b64_json", not a key
            at = raw.find(_KEY, i)
            continue
        i += 1
        while i < len(raw) and raw[i] in _WHITESPACE:
            i += 1
        if i >= len(raw) or raw[i] != 0x22:  # not a string (null, number...): let orjson see it
            return []
        start = i + 1
        end = raw.find(b'"', start)
        if end == -1 or raw.find(b"\\", start, end) != -1:
            return []  # escaped characters: not plain base64, take the slow, exact path
        spans.append((start, end))
        at = raw.find(_KEY, end + 1)
    return spans


def _place(body: Any, marker: str, values: list[memoryview]) -> Any | None:
    """Put each cut-out value back where its placeholder is; None if any is elsewhere."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None
    found = 0
    for item in body["data"]:
        if not isinstance(item, dict):
            continue
        value = item.get("b64_json")
        if isinstance(value, str) and value.startswith(marker):
            index = value[len(marker) :]
            if not index.isdigit() or int(index) != found:
                return None
            item["b64_json"] = values[found]
            found += 1
    return body if found == len(values) else None
