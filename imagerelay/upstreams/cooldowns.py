"""Channel cooldowns shared by every gateway process through Redis.

When a channel trips its breaker in one process, that process writes the cooldown's
end into one Redis hash (field: channel name, value: end on the server clock). Every
process reads the whole hash once per ``refresh_s`` in the background and keeps the
answer as local deadlines, so ordering candidates on the request path only reads a
dict: no round trip per call. Another process thus stops sending to a cooled-down
channel within about ``refresh_s``.

One hash rather than one key per channel: a single read returns every cooldown
without knowing channel names in advance or scanning the keyspace. Entries whose
end has passed are dropped by that read.

The per-process breaker (consecutive failures, half-open probe) stays as it is; this
only spreads its verdict. A failed Redis call logs a warning and keeps the last
snapshot, whose deadlines run out on their own (fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from imagerelay.limits.connection import REDIS_ERRORS, SharedRedis

# KEYS: the hash. ARGV: channel, cooldown ms. Keeps the later end if one is already set.
TRIP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if current < now + ms then
  redis.call('HSET', KEYS[1], ARGV[1], now + ms)
end
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 0
"""

# KEYS: the hash. Returns {channel, ms left, channel, ms left, ...}, dropping ended ones.
READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    live[#live + 1] = all[i]
    live[#live + 1] = left
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"""


class RedisCooldowns:
    def __init__(
        self, redis: SharedRedis, *, refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._key = redis.key("cooldowns")
        self._trip = redis.client.register_script(TRIP)
        self._read = redis.client.register_script(READ)
        self._refresh_s = refresh_s
        self._clock = clock
        self._until: dict[str, float] = {}  # channel -> end, on this process's clock
        self._writes: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    def remaining(self, name: str, now: float) -> float:
        """Seconds this channel stays cooled down, as last seen; never waits on Redis."""
        until = self._until.get(name)
        return 0.0 if until is None else max(0.0, until - now)

    def trip(self, name: str, seconds: float) -> None:
        self._until[name] = max(self._until.get(name, 0.0), self._clock() + seconds)
        self._write(lambda: self._trip(keys=[self._key], args=[name, int(seconds * 1000)]))

    def clear(self, name: str) -> None:
        """An operator re-enabled the channel: end its cooldown everywhere."""
        self._until.pop(name, None)
        self._write(lambda: self._redis.client.hdel(self._key, name))

    def _write(self, op: Callable[[], Awaitable[object]]) -> None:
        # Called from the pool's synchronous bookkeeping: the write runs on its own.
        async def run() -> None:
            if not self._redis.usable:
                return
            try:
                await self._redis.bounded(op())
            except REDIS_ERRORS as exc:
                self._redis.failed("channel cooldowns", exc)

        task = asyncio.ensure_future(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def refresh(self) -> None:
        if not self._redis.usable:
            return
        try:
            live = await self._redis.bounded(self._read(keys=[self._key]))
        except REDIS_ERRORS as exc:
            self._redis.failed("channel cooldowns", exc)
            return
        self._redis.succeeded()
        now = self._clock()
        self._until = {
            (live[i].decode() if isinstance(live[i], bytes) else str(live[i])): now + int(live[i + 1]) / 1000
            for i in range(0, len(live), 2)
        }

    async def _poll_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever())

    async def drain(self) -> None:
        """Wait for the cooldown writes already started (they never raise)."""
        await asyncio.gather(*self._writes)

    async def aclose(self) -> None:
        await self.drain()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
