"""How request bodies may arrive: in time, and within the process's memory budget.

An ASGI middleware that wraps ``receive``; the parsers in :mod:`imagerelay.api.parsing`
read bodies chunk by chunk through it, so both rules apply while the body arrives:

- **time** (after Apache's ``mod_reqtimeout`` ``body=...,MinRate=...``): once the app
  starts reading, the body may pause at most ``timeout_s`` between chunks, and must
  arrive by ``timeout_s + received / min_rate`` seconds, so a body trickled a byte at a
  time is cut with a 408 instead of holding its socket and its slot for hours, while a
  large upload on a slow but honest link earns its time as it goes;
- **memory**: body bytes held by calls in progress count against one per-process
  budget (the declared ``Content-Length`` is reserved up front, a chunked body as it
  comes); a call that would pass it gets a 503 with ``retry-after``, so two huge edits
  cannot take gigabytes together. A call's share is returned when its response ends.

uvicorn offers neither (it buffers at most 64 KB per connection, then stops reading,
and waits forever for the rest). The checks cost a timer per chunk: nothing for the
small JSON calls that make up the traffic.
"""

from __future__ import annotations

import asyncio
from typing import Any

from imagerelay.errors import RequestTimeout, ServerBusy


class BodyBudget:
    """Bytes of request bodies held in this process; not thread-safe (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodyGuard:
    def __init__(self, app: Any, *, timeout_s: float, min_rate: int, budget: BodyBudget) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.budget = budget

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _GuardedBody(self, scope, receive)
        try:
            await self.app(scope, body.receive, send)
        finally:
            self.budget.give(body.reserved)


class _GuardedBody:
    __slots__ = ("guard", "scope", "_receive", "complete", "received", "reserved", "started")

    def __init__(self, guard: BodyGuard, scope: Any, receive: Any) -> None:
        self.guard = guard
        self.scope = scope
        self._receive = receive
        self.complete = False
        self.received = 0
        self.reserved = 0
        self.started = 0.0

    async def receive(self) -> Any:
        if self.complete:  # only http.disconnect is left to wait for: no deadline
            return await self._receive()
        guard = self.guard
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self.started:
            self.started = now
            self._reserve(_declared_length(self.scope))
        deadline = min(now + guard.timeout_s, self.started + guard.timeout_s + self.received / guard.min_rate)
        try:
            async with asyncio.timeout_at(deadline):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body arrived too slowly ({self.received:,} bytes in {now - self.started:.0f} s); "
                f"it may pause at most {guard.timeout_s:g} s and must average {guard.min_rate:,} bytes/s. "
                "Send the whole body promptly.",
                headers={"connection": "close"},
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self._reserve(self.received)
            self.complete = not message.get("more_body", False)
        return message

    def _reserve(self, upto: int) -> None:
        if upto <= self.reserved:
            return
        if not self.guard.budget.take(upto - self.reserved):
            raise ServerBusy(
                "The gateway is receiving too many large request bodies right now; retry in a few seconds.",
                headers={"retry-after": "5"},
            )
        self.reserved = upto


def _declared_length(scope: Any) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
