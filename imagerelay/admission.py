"""Admission pacing: at most N calls in their CPU-heavy phases at once.

Thousands of calls arriving (or answered) in the same second each need ~1-2 ms of CPU
to route, validate and hold (or to shape the answer and settle). Unpaced, every one of
them sits in the event loop's FIFO ready queue at once and a ``/healthz`` probe, a
stream's next event or an admitted call's next step waits seconds behind them. The
gate lets N calls through those phases at a time; the rest wait on a semaphore (not in
the ready queue), so other work is served between turns. The total work is the same.

Nothing waits for the gate while holding it (a holder awaits only its own database
writes), so it cannot deadlock; a call that cannot get in before its deadline gets a
503 instead of hanging. Uncontended, it costs one semaphore acquire (~1 µs).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from imagerelay.errors import ServerBusy


class AdmissionGate:
    def __init__(self, concurrency: int) -> None:
        self._sem = asyncio.Semaphore(concurrency)

    def through(self, started: float, deadline_s: float) -> _Turn:
        """``async with gate.through(ctx.started, deadline_s):`` one paced phase of a call
        that started at ``started`` (monotonic) and must be over ``deadline_s`` after it."""
        return _Turn(self._sem, started + deadline_s)

    def answering(self) -> asyncio.Semaphore:
        """``async with gate.answering():`` shaping an answer that has arrived. No deadline:
        the upstream has answered (and will bill for it), so the call waits its turn
        rather than throw the answer away; holders never wait on the gate, so turns come."""
        return self._sem


class _Turn:
    __slots__ = ("_sem", "_until")

    def __init__(self, sem: asyncio.Semaphore, until: float) -> None:
        self._sem, self._until = sem, until

    async def __aenter__(self) -> None:
        sem = self._sem
        if not sem.locked():  # the uncontended path: no timer
            await sem.acquire()
            return
        try:
            async with asyncio.timeout(self._until - time.monotonic()):
                await sem.acquire()
        except TimeoutError:
            raise ServerBusy(
                "The gateway is admitting too many calls at once and this call's deadline passed "
                "while it waited; retry the request.",
                headers={"retry-after": "1"},
            ) from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sem.release()
