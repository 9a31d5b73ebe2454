"""Per-token limits shared by every gateway process through Redis.

Same contract and the same 429 answers as the in-process ``TokenLimiter``:

- requests per minute: a sliding window, one ZSET per token of call ids scored by
  their start time; admission prunes what left the window and counts the rest.
- concurrent calls: one ZSET per token of call ids scored by when their lease runs
  out. A process renews the leases of its calls in flight every third of the lease,
  and admission prunes expired ones first, so a process that dies mid-call gives its
  slots back within one lease instead of holding them forever.

Both checks and both writes run in one Lua script, so two processes admitting at the
same instant cannot both take the last slot. Times come from the Redis server clock,
so hosts with skewed clocks still share one window. A token without limits never
causes a round trip; when Redis fails, calls are admitted (see ``connection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from redis.exceptions import NoScriptError

from imagerelay.domain.accounts import TokenInfo
from imagerelay.limits.connection import REDIS_ERRORS, SharedRedis
from imagerelay.limits.local import UNLIMITED, WINDOW_S, concurrency_exceeded, rpm_exceeded

# Both scripts take ARGV[1] = now in ms, or a negative number for the Redis server clock.
_NOW_MS = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: rpm zset, calls zset. ARGV: now ms (negative: use the server clock), window ms,
# rpm limit (0: none), concurrency limit (0: none), call id, lease ms.
# Returns {0, 0} admitted, {1, ms until a window slot frees} or {2, 0} refused.
ADMIT = (
    _NOW_MS
    + """
local window, rpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local id, lease = ARGV[5], tonumber(ARGV[6])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now}
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then
    return {2, 0}
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window)
end
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, id)
  redis.call('PEXPIRE', KEYS[2], lease)
end
return {0, 0}
"""
)

# KEYS: calls zset. ARGV: now ms (negative: server clock), lease ms, call id.
# XX: a lease that already expired (this process stalled past it) stays gone.
RENEW = (
    _NOW_MS
    + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)


class RedisTokenLimiter:
    def __init__(self, redis: SharedRedis, *, lease_s: float = 30.0, clock: Callable[[], float] | None = None) -> None:
        """``clock`` (seconds) replaces the Redis server clock; tests use it to move time."""
        self._redis = redis
        self._admit = redis.client.register_script(ADMIT)
        self._renew = redis.client.register_script(RENEW)
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._leases: dict[str, str] = {}  # call id -> calls key, for the calls in flight here
        self._renewer: asyncio.Task[None] | None = None

    def admit(self, token: TokenInfo) -> AbstractAsyncContextManager[None]:
        if token.rpm_limit is None and token.concurrency_limit is None:
            return UNLIMITED
        return _SharedAdmission(self, token)

    def _now_ms(self) -> int:
        return -1 if self._clock is None else int(self._clock() * 1000)

    def _keys(self, token: TokenInfo) -> list[str]:
        # One hash tag per token keeps both keys in one slot, as a script needs on a cluster.
        tag = f"{{{token.id}}}"
        return [self._redis.key("limit", tag, "rpm"), self._redis.key("limit", tag, "calls")]

    async def _enter(self, token: TokenInfo) -> str | None:
        """Admit or raise; returns the call id holding a concurrency lease, if any."""
        if not self._redis.usable:
            return None
        call_id = os.urandom(9).hex()
        keys = self._keys(token)
        args: list[int | str] = [
            self._now_ms(),
            int(WINDOW_S * 1000),
            token.rpm_limit or 0,
            token.concurrency_limit or 0,
            call_id,
            self._lease_ms,
        ]
        try:
            try:
                # EVALSHA in the shared pipeline (SharedRedis.pipelined); a server that
                # does not know the script yet (a restart, a flush) gets it loaded once.
                verdict, wait_ms = await self._redis.bounded(
                    self._redis.pipelined("EVALSHA", self._admit.sha, len(keys), *keys, *args)
                )
            except NoScriptError:
                verdict, wait_ms = await self._redis.bounded(self._admit(keys=keys, args=args))
        except REDIS_ERRORS as exc:
            self._redis.failed("rate limits", exc)
            return None
        self._redis.succeeded()
        if verdict == 1:
            assert token.rpm_limit is not None
            raise rpm_exceeded(token.rpm_limit, int(wait_ms) / 1000)
        if verdict == 2:
            assert token.concurrency_limit is not None
            raise concurrency_exceeded(token.concurrency_limit)
        if token.concurrency_limit is None:
            return None
        self._leases[call_id] = keys[1]
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())
        return call_id

    async def _exit(self, call_id: str) -> None:
        key = self._leases.pop(call_id, None)
        if key is None or not self._redis.usable:
            return  # the lease runs out by itself
        try:
            await self._redis.bounded(self._redis.pipelined("ZREM", key, call_id))
        except REDIS_ERRORS as exc:
            self._redis.failed("rate limits", exc)

    async def renew(self) -> None:
        """Extend the lease of every call in flight in this process (one round trip)."""
        if not self._leases or not self._redis.usable:
            return
        now, lease = self._now_ms(), self._lease_ms
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for call_id, key in list(self._leases.items()):
                    await self._renew(keys=[key], args=[now, lease, call_id], client=pipe)
                await self._redis.bounded(pipe.execute())
        except REDIS_ERRORS as exc:
            self._redis.failed("rate limits", exc)

    async def _renew_forever(self) -> None:
        while self._leases:
            await asyncio.sleep(self._lease_ms / 3000)
            await self.renew()

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer


class _SharedAdmission:
    __slots__ = ("_limiter", "_token", "_call_id")

    def __init__(self, limiter: RedisTokenLimiter, token: TokenInfo) -> None:
        self._limiter, self._token = limiter, token
        self._call_id: str | None = None

    async def __aenter__(self) -> None:
        self._call_id = await self._limiter._enter(self._token)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._call_id is not None:
            await self._limiter._exit(self._call_id)
