"""Whitespace keep-alive for slow synchronous calls: when it is on, and what it sends.

A proxy in front of a client may cut a response that stays silent for long (60 s is
common) while an image call can take minutes. A kept-alive call answers 200 at once and
sends a space every few seconds until its JSON: leading whitespace is legal JSON, so
every client (the official SDK included) parses the final body normally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable

import orjson

from imagerelay.catalog.loader import ResolvedRoute
from imagerelay.errors import ApiError, InvalidRequest

log = logging.getLogger("imagerelay.relay")

HEADER = "X-Imagerelay-Keepalive"
MIN_S = 1.0
MAX_S = 60.0


def interval(asked: float | None, route: ResolvedRoute | None) -> float | None:
    """Seconds between spaces, or None for a plain answer: the caller's ``asked``
    interval (``X-Imagerelay-Keepalive``; NaN when it was not a number), else the
    route's default."""
    if asked is not None:
        if not MIN_S <= asked <= MAX_S:
            raise InvalidRequest(
                f"{HEADER} must be a number of seconds from {MIN_S:g} to {MAX_S:g}.",
                param=HEADER,
            )
        return asked
    return route.spec.keepalive_s if route is not None else None


def kept_alive(produce: Awaitable[bytes], every_s: float, request_id: str) -> AsyncGenerator[bytes, None]:
    """The body of a kept-alive answer: a space at once and every ``every_s`` seconds,
    then the JSON ``produce`` yields.

    ``produce`` starts now, not when the body is first read: a client that leaves before
    that still has its call run and settled. The status is committed before the outcome
    is known, so an error arrives as a 200 whose body is the official ``{"error": ...}``.
    """
    task = asyncio.ensure_future(produce)

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b" "
            while True:
                done, _ = await asyncio.wait({task}, timeout=every_s)
                if done:
                    break
                yield b" "
            try:
                raw = task.result()
            except ApiError as err:
                raw = orjson.dumps(err.to_body())
            except Exception as exc:  # noqa: BLE001 - the status is already sent
                log.error("unexpected %s in a keep-alive call (request %s)", type(exc).__name__, request_id)
                raw = orjson.dumps(
                    ApiError(
                        f"The gateway hit an internal error; retry, quoting request id {request_id}.",
                        status=500,
                        type="server_error",
                        code="internal_error",
                    ).to_body()
                )
            yield raw
        finally:
            if not task.done():
                task.cancel()  # the client left: the relay releases the hold

    return body()
