"""The Redis connection the shared limits (:mod:`imagerelay.limits.redis`) and the pool's
shared cooldowns (:mod:`imagerelay.upstreams.cooldowns`) use, and its fail-open policy.

Redis here guards fairness (rate limits) and spares failing upstreams (cooldowns);
neither is worth refusing a paying call over. So a Redis error never reaches the
client: the caller admits the call as if no shared state existed, and this module
logs one warning per outage window instead of one per call. After a failure Redis
is not asked again for ``backoff_s``, so an unreachable host costs one connect
timeout per window rather than one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Named for what it reports (shared state), not the module: log filters and tests use it.
log = logging.getLogger("imagerelay.shared")

T = TypeVar("T")

# What a failed Redis call can raise: redis-py wraps most socket trouble, not all.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


class SharedRedis:
    def __init__(
        self,
        url: str,
        prefix: str = "imagerelay:",
        *,
        timeout_s: float = 1.0,
        backoff_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # No client-side retries: a retry loop is exactly the latency fail-open avoids.
        # No socket_timeout either: redis-py enforces it on every send with
        # asyncio.wait_for, a task per command (~9% of the gateway's CPU at c=64 with
        # two commands a call); each caller bounds its call with :meth:`bounded`
        # instead (asyncio.timeout, no task). A call cut short by the timeout
        # disconnects its connection (redis-py does so on any exception mid-read).
        self.client: Redis = Redis.from_url(url, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._backoff_s = backoff_s
        self._clock = clock
        self._skip_until = 0.0
        self._down = False
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def pipelined(self, *command: Any) -> Any:
        """One command, sent with the others issued while the previous send was in
        flight: one pipeline, one write and one round trip for all of them (the two
        commands a call makes, admission and release, were ~17% of the gateway's CPU at
        c=64 when each was its own round trip; pipelines are ordered, and each command
        still runs atomically on the server). Raises what the command raised, or what
        the send did (every command of a failed send gets it: fail open)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((command, future))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())
        return await future

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                batch = [(c, f) for c, f in self._queued if not f.cancelled()]  # a caller that timed out
                self._queued = []
                if not batch:
                    continue
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for command, _future in batch:
                            pipe.execute_command(*command)
                        # Bounded here too: a hung connection must not stall every later command.
                        results = await self.bounded(pipe.execute(raise_on_error=False))
                except Exception as exc:  # noqa: BLE001 - the callers decide (they fail open)
                    for _command, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_command, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._sender = None
            for _command, future in self._queued:  # only when cancelled (the process stops)
                future.cancel()
            self._queued = []

    async def bounded(self, call: Awaitable[T]) -> T:
        """Await one Redis call for at most ``timeout_s`` (a TimeoutError, which is an
        OSError, past it)."""
        async with asyncio.timeout(self.timeout_s):
            return await call

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def usable(self) -> bool:
        """False for a short while after a failure: callers fail open without asking."""
        return not self._down or self._clock() >= self._skip_until

    def failed(self, what: str, exc: BaseException) -> None:
        if not self._down:
            # The exception type only: a message could carry the URL and its password.
            log.warning(
                "Redis unavailable (%s) for %s: shared rate limits and channel cooldowns fail open "
                "(calls are admitted, per-process breakers still apply) until it is back",
                type(exc).__name__,
                what,
            )
        self._down = True
        self._skip_until = self._clock() + self._backoff_s

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("Redis reachable again: shared rate limits and channel cooldowns apply")

    async def ping(self) -> bool:
        try:
            await self.bounded(self.client.ping())
        except REDIS_ERRORS as exc:
            self.failed("start-up", exc)
            return False
        self.succeeded()
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
