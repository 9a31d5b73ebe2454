"""Token limits: the in-process limiter and the Redis one obey the same contract, and the
Redis one is shared between limiters as between processes. Real Redis, one key prefix
per test; time is moved through an injected clock, never waited for."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from imagerelay.domain.accounts import TokenInfo
from imagerelay.errors import RateLimited
from imagerelay.limits.connection import SharedRedis
from imagerelay.limits.local import UNLIMITED, Limiter, TokenLimiter
from imagerelay.limits.redis import RedisTokenLimiter
from tests.support.gateway import free_port

LEASE_S = 30.0


def token(rpm: int | None = None, concurrency: int | None = None, tid: int = 1) -> TokenInfo:
    return TokenInfo(
        id=tid,
        user_id=1,
        user_name="u",
        group="g",
        name="t",
        expires_at=None,
        revoked=False,
        is_admin=False,
        rpm_limit=rpm,
        concurrency_limit=concurrency,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["in-process", "redis"])
def make(request: pytest.FixtureRequest, clock: Clock) -> Callable[[], Limiter]:
    """A factory of limiters that share state: trivially in process, through Redis otherwise."""
    if request.param == "in-process":
        limiter = TokenLimiter(clock=clock)
        return lambda: limiter
    shared: SharedRedis = request.getfixturevalue("redis")
    return lambda: RedisTokenLimiter(shared, lease_s=LEASE_S, clock=clock)


async def test_rpm_window_slides(make: Callable[[], Limiter], clock: Clock) -> None:
    t = token(rpm=2)
    for _ in range(2):
        async with make().admit(t):
            pass
    with pytest.raises(RateLimited) as info:
        async with make().admit(t):
            pass
    assert info.value.headers["retry-after"] == "60"
    assert info.value.message == "This API key is limited to 2 requests per minute; retry in 60 s."
    clock.now += 30
    with pytest.raises(RateLimited) as info:
        async with make().admit(t):
            pass
    assert info.value.headers["retry-after"] == "30"
    clock.now += 30.001
    async with make().admit(t):
        pass


async def test_concurrency_slots_are_returned(make: Callable[[], Limiter]) -> None:
    t = token(concurrency=2)
    async with make().admit(t), make().admit(t):
        with pytest.raises(RateLimited) as info:
            async with make().admit(t):
                pass
        assert info.value.code == "rate_limit_exceeded" and info.value.headers["retry-after"] == "1"
        async with make().admit(token(concurrency=2, tid=2)):  # other tokens are unaffected
            pass
    async with make().admit(t), make().admit(t):
        pass


async def test_slot_returned_on_error(make: Callable[[], Limiter]) -> None:
    t = token(concurrency=1)
    with pytest.raises(ValueError):
        async with make().admit(t):
            raise ValueError
    async with make().admit(t):
        pass


async def test_rpm_and_concurrency_together(make: Callable[[], Limiter]) -> None:
    t = token(rpm=3, concurrency=1)
    async with make().admit(t):
        with pytest.raises(RateLimited):  # refused for concurrency: does not use up the minute
            async with make().admit(t):
                pass
    async with make().admit(t):
        pass
    async with make().admit(t):
        pass
    with pytest.raises(RateLimited) as info:
        async with make().admit(t):
            pass
    assert "requests per minute" in info.value.message


async def test_tokens_without_limits_never_reach_redis() -> None:
    # Pointed at a closed port: any round trip would fail and be logged.
    shared = SharedRedis(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RedisTokenLimiter(shared)
    assert limiter.admit(token()) is UNLIMITED
    assert shared.usable
    await shared.aclose()


async def test_two_limiters_share_one_window(redis: SharedRedis, clock: Clock) -> None:
    a = RedisTokenLimiter(redis, clock=clock)
    b = RedisTokenLimiter(redis, clock=clock)
    t = token(rpm=4)
    admitted = 0
    for limiter in (a, b) * 4:
        try:
            async with limiter.admit(t):
                admitted += 1
        except RateLimited:
            pass
    assert admitted == 4


async def test_lease_of_a_dead_process_runs_out(redis: SharedRedis, clock: Clock) -> None:
    t = token(concurrency=1)
    dead = RedisTokenLimiter(redis, lease_s=LEASE_S, clock=clock)
    await dead.admit(t).__aenter__()  # the process dies inside the call: never exits
    await dead.aclose()
    alive = RedisTokenLimiter(redis, lease_s=LEASE_S, clock=clock)
    with pytest.raises(RateLimited):
        async with alive.admit(t):
            pass
    clock.now += LEASE_S + 0.001
    async with alive.admit(t):
        pass


async def test_renewed_lease_outlives_its_first_term(redis: SharedRedis, clock: Clock) -> None:
    t = token(concurrency=1)
    a = RedisTokenLimiter(redis, lease_s=LEASE_S, clock=clock)
    b = RedisTokenLimiter(redis, lease_s=LEASE_S, clock=clock)
    async with a.admit(t):
        clock.now += LEASE_S * 0.8
        await a.renew()
        clock.now += LEASE_S * 0.8  # past the first term, within the renewed one
        with pytest.raises(RateLimited):
            async with b.admit(t):
                pass
    async with b.admit(t):
        pass
    await a.aclose()


async def test_redis_down_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    shared = SharedRedis(f"redis://127.0.0.1:{free_port()}/0", backoff_s=60)
    limiter = RedisTokenLimiter(shared)
    t = token(rpm=1, concurrency=1)
    with caplog.at_level(logging.WARNING, logger="imagerelay.shared"):
        async with limiter.admit(t), limiter.admit(t):
            pass
        async with limiter.admit(t):
            pass
    warnings = [r for r in caplog.records if r.name == "imagerelay.shared"]
    assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()
    assert "redis://" not in warnings[0].getMessage()
    await limiter.aclose()
    await shared.aclose()
