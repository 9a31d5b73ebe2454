"""State that several gateway processes share through Redis (``IMAGERELAY_REDIS_URL``):
per-token rate and concurrency limits, and channel cooldowns. Balances and holds are
shared through the database instead. See docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# redis-py is an optional dependency (imagerelay[redis]): imported only when configured.
if TYPE_CHECKING:
    from imagerelay.limits.connection import SharedRedis
    from imagerelay.upstreams.cooldowns import RedisCooldowns
    from imagerelay.limits.redis import RedisTokenLimiter


@dataclass
class SharedState:
    redis: SharedRedis
    limiter: RedisTokenLimiter
    cooldowns: RedisCooldowns

    @classmethod
    def connect(cls, url: str, prefix: str) -> SharedState:
        """Builds the clients; nothing is sent to Redis before ``start``."""
        try:
            from imagerelay.limits.connection import SharedRedis
            from imagerelay.upstreams.cooldowns import RedisCooldowns
            from imagerelay.limits.redis import RedisTokenLimiter
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise RuntimeError("IMAGERELAY_REDIS_URL is set but redis-py is not installed; "
                               "install it with: pip install 'imagerelay[redis]'") from None
        redis = SharedRedis(url, prefix)
        return cls(redis, RedisTokenLimiter(redis), RedisCooldowns(redis))

    async def start(self) -> None:
        # A Redis that is down at start-up is an outage like any other: log and fail open.
        await self.redis.ping()
        self.cooldowns.start()

    async def aclose(self) -> None:
        await self.limiter.aclose()
        await self.cooldowns.aclose()
        await self.redis.aclose()

