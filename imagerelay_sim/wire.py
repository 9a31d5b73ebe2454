"""Simulator responses below the usual HTTP layer: resets, truncated bodies, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

# The key under which the app keeps the server's own send callable in the ASGI scope.
_SCOPE_SEND = "imagerelay.sim.server_send"

# =========================================================================== low-level responses


def _server_cycle(scope: Scope) -> Any:
    send = scope.get(_SCOPE_SEND)
    return getattr(send, "__self__", None)


async def _drop_connection(scope: Scope, *, reset: bool) -> None:
    """Close (FIN, after flushing what was written) or reset (RST) the client connection.

    Waits until the server has noticed, so it does not try to answer on its own.
    """
    cycle = _server_cycle(scope)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("upstream simulator: server transport not reachable; cannot drop the connection")
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a platform without SO_LINGER
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.005)


def _client_gone(scope: Scope) -> bool:
    return bool(getattr(_server_cycle(scope), "disconnected", False))


def _raw_headers(headers: Mapping[str, str], content_type: str, length: int | None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type.encode())]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    out.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    return out


class ResetResponse(Response):
    """No answer at all: the TCP connection is reset."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _drop_connection(scope, reset=True)


class DropResponse(Response):
    """No answer at all: the connection is closed cleanly (FIN), as a server does when
    its keep-alive timeout fires just as a request arrives on the idle connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _drop_connection(scope, reset=False)


class TruncatedResponse(Response):
    """Headers promise ``len(body)`` bytes; half arrive, then the connection closes."""

    def __init__(
        self,
        body: bytes,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "application/json",
    ) -> None:
        super().__init__(status_code=status_code)
        self._full = body
        self._extra = dict(headers or {})
        self._media = media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": _raw_headers(self._extra, self._media, len(self._full)),
            }
        )
        await send({"type": "http.response.body", "body": self._full[: len(self._full) // 2], "more_body": True})
        await _drop_connection(scope, reset=False)


class SSEResponse(Response):
    """``text/event-stream`` written frame by frame as the frames are produced.

    ``cut``: ``"after_first"`` drops the connection after the first frame,
    ``"mid_first"`` after half of it (used when the stream has a single frame).
    """

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str],
        cut: Literal["after_first", "mid_first"] | None = None,
    ) -> None:
        super().__init__(status_code=200)
        self._frames = frames
        self._extra = dict(headers)
        self._cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _raw_headers(self._extra, "text/event-stream; charset=utf-8", None),
            }
        )
        async for frame in self._frames:
            if self._cut == "mid_first":
                await send({"type": "http.response.body", "body": frame[: len(frame) // 2], "more_body": True})
                await _drop_connection(scope, reset=False)
                return
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if self._cut == "after_first":
                await _drop_connection(scope, reset=False)
                return
            if _client_gone(scope):
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _json_response(status: int, body: Any, headers: Mapping[str, str]) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=dict(headers), media_type="application/json")


def _sse_frame(event: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
