"""Per-token request-rate and concurrency limits.

``admit(token)`` returns an async context manager: entering it admits one call or
raises 429 ``rate_limit_exceeded`` with retry-after; leaving it returns the
concurrency slot. The interface is async because the shared implementation
(``imagerelay.limits.redis``, used when ``IMAGERELAY_REDIS_URL`` is set) asks Redis.

In-process (this module): a sliding one-minute window of call start times and a
count of calls in flight, per token. Its enter/exit never suspend, so awaiting
them costs a function call, not a trip through the event loop. With several
worker processes each enforces its own share.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

from imagerelay.domain.accounts import TokenInfo
from imagerelay.errors import RateLimited

WINDOW_S = 60.0


class Limiter(Protocol):
    def admit(self, token: TokenInfo) -> AbstractAsyncContextManager[None]: ...

    async def aclose(self) -> None: ...


def rpm_exceeded(limit: int, wait_s: float) -> RateLimited:
    wait = max(1, math.ceil(wait_s))
    return RateLimited(
        f"This API key is limited to {limit} requests per minute; retry in {wait} s.",
        headers={"retry-after": str(wait)},
    )


def concurrency_exceeded(limit: int) -> RateLimited:
    return RateLimited(
        f"This API key allows {limit} concurrent requests; wait for one to finish.",
        headers={"retry-after": "1"},
    )


def rate_part(token: TokenInfo) -> TokenInfo:
    """The token with only its rpm limit: a job counts against rpm when it is submitted."""
    return dataclasses.replace(token, concurrency_limit=None)


def concurrency_part(token: TokenInfo) -> TokenInfo:
    """The token with only its concurrency limit: a job holds a slot while it runs upstream."""
    return dataclasses.replace(token, rpm_limit=None)


class Unlimited:
    """The admission of a token without limits: nothing to check, nothing to return."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


UNLIMITED = Unlimited()


class TokenLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._starts: dict[int, deque[float]] = {}
        self._in_flight: dict[int, int] = {}

    def admit(self, token: TokenInfo) -> AbstractAsyncContextManager[None]:
        if token.rpm_limit is None and token.concurrency_limit is None:
            return UNLIMITED
        return _Admission(self, token)

    async def aclose(self) -> None:
        return None

    def _enter(self, token: TokenInfo) -> None:
        now = self._clock()
        if token.rpm_limit is not None:
            starts = self._starts.setdefault(token.id, deque())
            while starts and starts[0] <= now - WINDOW_S:
                starts.popleft()
            if len(starts) >= token.rpm_limit:
                raise rpm_exceeded(token.rpm_limit, starts[0] + WINDOW_S - now)
        in_flight = self._in_flight.get(token.id, 0)
        if token.concurrency_limit is not None and in_flight >= token.concurrency_limit:
            raise concurrency_exceeded(token.concurrency_limit)
        if token.rpm_limit is not None:
            self._starts[token.id].append(now)
        self._in_flight[token.id] = in_flight + 1

    def _exit(self, token: TokenInfo) -> None:
        left = self._in_flight[token.id] - 1
        if left:
            self._in_flight[token.id] = left
        else:
            del self._in_flight[token.id]


class _Admission:
    __slots__ = ("_limiter", "_token")

    def __init__(self, limiter: TokenLimiter, token: TokenInfo) -> None:
        self._limiter, self._token = limiter, token

    async def __aenter__(self) -> None:
        self._limiter._enter(self._token)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter._exit(self._token)
