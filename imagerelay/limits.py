"""Per-token request-rate and concurrency limits.

In-process: a sliding one-minute window of call start times and a count of calls
in flight, per token. With several worker processes each enforces its own share;
shared limits across processes belong to the Redis backend (see docs).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from imagerelay.errors import RateLimited
from imagerelay.storage.accounts import TokenInfo

WINDOW_S = 60.0


class TokenLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._starts: dict[int, deque[float]] = {}
        self._in_flight: dict[int, int] = {}

    @contextmanager
    def admit(self, token: TokenInfo) -> Iterator[None]:
        """Admit one call for ``token`` or raise 429 ``rate_limit_exceeded`` with retry-after."""
        if token.rpm_limit is None and token.concurrency_limit is None:
            yield
            return
        now = self._clock()
        if token.rpm_limit is not None:
            starts = self._starts.setdefault(token.id, deque())
            while starts and starts[0] <= now - WINDOW_S:
                starts.popleft()
            if len(starts) >= token.rpm_limit:
                wait = max(1, math.ceil(starts[0] + WINDOW_S - now))
                raise RateLimited(
                    f"This API key is limited to {token.rpm_limit} requests per minute; retry in {wait} s.",
                    headers={"retry-after": str(wait)},
                )
        in_flight = self._in_flight.get(token.id, 0)
        if token.concurrency_limit is not None and in_flight >= token.concurrency_limit:
            raise RateLimited(
                f"This API key allows {token.concurrency_limit} concurrent requests; wait for one to finish.",
                headers={"retry-after": "1"},
            )
        if token.rpm_limit is not None:
            self._starts[token.id].append(now)
        self._in_flight[token.id] = in_flight + 1
        try:
            yield
        finally:
            left = self._in_flight[token.id] - 1
            if left:
                self._in_flight[token.id] = left
            else:
                del self._in_flight[token.id]
