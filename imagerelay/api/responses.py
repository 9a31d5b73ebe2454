"""orjson-rendered responses (several times faster than json for 30 MB base64 bodies)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


_LARGE = 256 * 1024
_CHUNK = 1024 * 1024


def images_response(body: dict[str, Any], headers: dict[str, str]) -> Response:
    """An ``ImagesResponse``; large base64 images are streamed in 1 MB pieces.

    orjson.dumps of a 4K answer makes a second 33 MB copy of a string we already
    hold; splicing the base64 into the serialised skeleton instead keeps one copy.
    Base64 needs no JSON escaping, so the spliced text is the same JSON.
    """
    data = body.get("data") or []
    large = [i for i, item in enumerate(data) if len(item.get("b64_json") or "") > _LARGE]
    if not large:
        return json_response(body, headers=headers)
    marker = secrets.token_hex(8)
    skeleton = {**body, "data": [{**item, "b64_json": f"{marker}{i}"} if i in large else item
                                 for i, item in enumerate(data)]}
    text = orjson.dumps(skeleton)
    pieces: list[tuple[bytes, str | None]] = []  # (json text before, image after)
    pos = 0
    for i in large:
        token = f'"{marker}{i}"'.encode()
        at = text.index(token, pos)
        pieces.append((text[pos:at] + b'"', data[i]["b64_json"]))
        pieces.append((b'"', None))  # the closing quote of the spliced string
        pos = at + len(token)
    tail = text[pos:]
    length = sum(len(prefix) + (len(b64) if b64 else 0) for prefix, b64 in pieces) + len(tail)

    async def stream() -> AsyncIterator[bytes]:
        for prefix, b64 in pieces:
            yield prefix
            if b64:
                for start in range(0, len(b64), _CHUNK):
                    yield b64[start:start + _CHUNK].encode("ascii")
        yield tail

    return StreamingResponse(stream(), media_type="application/json",
                             headers={**headers, "content-length": str(length)})
