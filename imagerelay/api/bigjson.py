"""Parse a large JSON body without stalling the event loop on its image data.

A JSON edit carries its images as base64 data URLs: up to ~1 GB of string. orjson
parses long strings at ~300 MB/s and holds the GIL throughout (measured: a 224 MB
body stopped every other thread for 0.9 s), so running it in a worker thread does not
help, and it copies every string into a ``str``. Here each string longer than
``threshold`` is cut out of the body (found with ``bytes.find``, C speed) and replaced
by a short placeholder; orjson parses the small skeleton that is left; the caller
takes the long strings back as ``memoryview`` slices of the body, where base64 decodes
them with the GIL released. No library does this split: ijson/yajl would parse the
same bytes in Python-visible events, slower still.

The scan only has to tell where each JSON string ends: at the first ``"`` not
preceded by an odd run of ``\\``. Anything else malformed is left in the skeleton for
orjson to report. Runs of more than ``MAX_BACKSLASH_RUN`` backslashes before a quote
are refused, which bounds the scan's work to a constant per byte; no image request
contains them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any, NoReturn

import orjson

from imagerelay.errors import InvalidRequest, PayloadTooLarge

MAX_BACKSLASH_RUN = 16
_QUOTE = 0x22
_BACKSLASH = 0x5C


class LargeStrings:
    """The long strings cut out of a body, found again through their placeholders."""

    def __init__(self, token: str, views: list[memoryview], threshold: int) -> None:
        self.token = token
        self.views = views
        self.threshold = threshold
        self.taken = 0

    def take(self, value: Any) -> memoryview | None:
        """The bytes of the long string ``value`` stands for, if it is a placeholder
        (``\\/`` unescaped; any other escape is left, and is not base64)."""
        if self.views and isinstance(value, str) and value.startswith(self.token):
            self.taken += 1
            return self.views[int(value[len(self.token) :])]
        return None

    def check_all_taken(self, body: Any) -> None:
        """Refuse a long string anywhere the caller did not take one (only image data URLs)."""
        if self.taken == len(self.views):
            return
        path = next(_placeholder_paths(body, self.token, ""), "body")
        raise PayloadTooLarge(
            f"{path} is longer than {self.threshold // 1024} KB; only image data URLs may be.", param=path
        )


def _placeholder_paths(value: Any, token: str, path: str) -> Iterator[str]:
    if isinstance(value, str) and value.startswith(token):
        yield path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _placeholder_paths(item, token, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _placeholder_paths(item, token, f"{path}[{i}]")


def split_parse(raw: bytes | bytearray, *, threshold: int, max_skeleton: int) -> tuple[Any, LargeStrings]:
    """``orjson.loads`` of ``raw`` with every string longer than ``threshold`` bytes
    replaced by a placeholder; raises a 4xx if what is left exceeds ``max_skeleton``."""
    token = "\x00large:" + secrets.token_hex(8) + ":"
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    views: list[memoryview] = []
    kept = 0  # bytes of the skeleton so far
    copied_to = 0
    pos = 0
    while (start := raw.find(b'"', pos)) >= 0:
        end = _string_end(raw, start)
        if end - start - 1 > threshold:
            pieces.append(view[copied_to:start])
            placeholder = orjson.dumps(token + str(len(views)))
            pieces.append(placeholder)
            kept += start - copied_to + len(placeholder)
            text = view[start + 1 : end]
            if raw.find(b"\\", start + 1, end) >= 0:  # some encoders write "/" as "\/" in base64
                text = memoryview(bytes(text).replace(b"\\/", b"/"))
            views.append(text)
            copied_to = end + 1
        pos = end + 1
        if kept + pos - copied_to > max_skeleton:  # checked as we go: the scan's work is bounded too
            _skeleton_too_large(max_skeleton)
    pieces.append(view[copied_to:])
    kept += len(raw) - copied_to
    if kept > max_skeleton:
        _skeleton_too_large(max_skeleton)
    skeleton = b"".join(pieces) if views else raw
    return orjson.loads(skeleton), LargeStrings(token, views, threshold)


def _skeleton_too_large(max_skeleton: int) -> NoReturn:
    raise PayloadTooLarge(
        f"The JSON body has more than {max_skeleton:,} bytes outside its image data URLs; "
        "send the edit's parameters and images only."
    )


def _string_end(raw: bytes | bytearray, start: int) -> int:
    """Index of the quote closing the JSON string opened at ``start``."""
    pos = start + 1
    while True:
        end = raw.find(b'"', pos)
        if end < 0:
            raise InvalidRequest(
                "The request body is not valid JSON (an unterminated string); "
                "send a JSON object with Content-Type: application/json.",
                code="invalid_json",
            )
        run = 0
        while raw[end - 1 - run] == _BACKSLASH and end - 1 - run > start:
            run += 1
            if run > MAX_BACKSLASH_RUN:
                raise InvalidRequest(
                    f"The request body has a run of more than {MAX_BACKSLASH_RUN} backslashes "
                    "before a quote, which no image request needs.",
                    code="invalid_json",
                )
        if run % 2 == 0:
            return end
        pos = end + 1
