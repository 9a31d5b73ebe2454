"""uvicorn's HTTP protocol with the limits it lacks against slow and numerous clients.

uvicorn (read at 0.54, httptools protocol) arms no timer until a response has been sent:
a connection that sends half a request head, or nothing, stays open for ever, so
~20,000 such sockets exhausted the process's file descriptors. Its ``limit_concurrency``
only answers 503 once a request head is complete, which a slow client never reaches,
and after an early answer (a 413 before the body was read) it keeps reading and
discarding the rest of the body for as long as the client trickles it. It also
accumulates request heads without a size limit (httptools/llhttp leave that to the
embedder). This subclass adds, per process:

- a **head timeout**: the request line and headers must arrive within
  ``header_timeout_s`` of the connection (or of the first byte of the next request on
  a kept-alive connection), else a 408 and the connection is closed;
- a **head size limit** (``MAX_HEAD_BYTES``): a 431 and close;
- a **connection cap** (``max_connections``): a connection past it gets a 503 and is
  closed at once, so descriptors are never exhausted and the callers already
  connected are served as before;
- a **linger limit**: after an early answer the client has ``body_timeout_s`` to finish
  sending the body it started (so an honest client still reads the answer) before the
  connection is closed.

It also tells a handler at once when its client leaves (:data:`WHEN_GONE`), which
uvicorn only reports to whoever is awaiting ``receive()``: a waiting task per call.

Body timeouts while the application reads are in :mod:`imagerelay.api.bodyguard`.
The hooks used here (``connection_made``, parser callbacks, ``on_response_complete``,
``timeout_keep_alive_task``) are uvicorn's own; ``tests/e2e/test_hostile_clients.py``
drives every one of these paths through the real server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imagerelay.config import Settings
from imagerelay.errors import ApiError, RequestTimeout, ServerBusy

log = logging.getLogger("imagerelay.api")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; the official SDKs send ~1 KB
_WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


@functools.cache
def edge_limits() -> EdgeLimits:
    """This process's limits, read once from the environment as the app's settings are
    (uvicorn builds the protocol by import path in each worker process)."""
    settings = Settings()
    return EdgeLimits(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)


def _raw_error(err: ApiError) -> bytes:
    body = orjson.dumps(err.to_body())
    head = [
        f"HTTP/1.1 {err.status} {_REASONS[err.status]}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in err.headers.items() if k != "connection"),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_HEAD_TIMEOUT = _raw_error(
    RequestTimeout("The request line and headers did not arrive in time; send the whole request promptly.")
)
_HEAD_TOO_LARGE = _raw_error(
    ApiError(
        f"The request line and headers exceed {MAX_HEAD_BYTES // 1024} KB; send fewer or shorter headers.",
        status=431,
        code="request_header_fields_too_large",
    )
)
_TOO_MANY = _raw_error(
    ServerBusy("The gateway has too many open connections; retry in a moment.", headers={"retry-after": "1"})
)


# The scope extension (``scope["extensions"][WHEN_GONE]``) holding the callbacks to run
# if the connection is lost before the response is complete: a handler adds one for as
# long as it works for its client (api/relay/images.py::_unless_disconnected). A dict
# used as an ordered set, as ASGI extensions are dicts.
WHEN_GONE = "imagerelay.when_gone"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _last_warning = 0.0  # per process: the refusal warning is logged at most once a minute

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = edge_limits()
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_too_large = False
        self._when_gone: dict[Callable[[], None], None] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            now = time.monotonic()
            if now - GuardedHttpToolsProtocol._last_warning > _WARN_EVERY_S:
                GuardedHttpToolsProtocol._last_warning = now
                log.warning(
                    "refusing connections: %d open, IMAGERELAY_MAX_CONNECTIONS is %d",
                    len(self.connections) - 1,
                    self.limits.max_connections,
                )
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm(self.limits.header_timeout_s, _HEAD_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if self._when_gone and cycle is not None and cycle.disconnected:  # gone before its answer
            callbacks = list(self._when_gone)
            self._when_gone.clear()
            for callback in callbacks:
                callback()

    # -- the request head: in time and bounded ----------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("extensions", {})[WHEN_GONE] = self._when_gone  # type: ignore[assignment]  # see WHEN_GONE
        self._head_bytes = 0
        if self._timer is None:  # the next request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, _HEAD_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # _count_head written out: this runs for every header of every request.
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._count_head(0)
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise ValueError("request head too large")  # httptools stops; uvicorn answers via send_400_response

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self.transport.write(_HEAD_TOO_LARGE)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    # -- after an early answer: let the body finish, but not for ever ------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle is not None and self.cycle.more_body:
            self._arm(self.limits.body_timeout_s, None)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._timer is not None and self.cycle is not None and self.cycle.response_complete:
            # The rest of an early-answered body has arrived: back to uvicorn's idle timer.
            self._disarm()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # -- the one timer ------------------------------------------------------------------------

    def _arm(self, delay: float, answer: bytes | None) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._expire, answer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, answer: bytes | None) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if answer is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(answer)
        self.transport.close()
