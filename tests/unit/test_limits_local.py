from __future__ import annotations

import pytest

from imagerelay.domain.accounts import TokenInfo
from imagerelay.errors import RateLimited
from imagerelay.limits.local import UNLIMITED, TokenLimiter


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


async def test_rpm_window_slides() -> None:
    now = [1000.0]
    limiter = TokenLimiter(clock=lambda: now[0])
    t = token(rpm=2)
    for _ in range(2):
        async with limiter.admit(t):
            pass
    with pytest.raises(RateLimited) as info:
        async with limiter.admit(t):
            pass
    assert info.value.headers["retry-after"] == "60"
    now[0] += 30
    with pytest.raises(RateLimited) as info:
        async with limiter.admit(t):
            pass
    assert info.value.headers["retry-after"] == "30"
    now[0] += 30.001
    async with limiter.admit(t):
        pass


async def test_concurrency_slots_are_returned() -> None:
    limiter = TokenLimiter()
    t = token(concurrency=2)
    async with limiter.admit(t), limiter.admit(t):
        with pytest.raises(RateLimited):
            async with limiter.admit(t):
                pass
        async with limiter.admit(token(concurrency=2, tid=2)):  # other tokens are unaffected
            pass
    async with limiter.admit(t):
        pass


async def test_slot_returned_on_error() -> None:
    limiter = TokenLimiter()
    t = token(concurrency=1)
    with pytest.raises(ValueError):
        async with limiter.admit(t):
            raise ValueError
    async with limiter.admit(t):
        pass


async def test_unlimited_tokens_pass() -> None:
    limiter = TokenLimiter()
    assert limiter.admit(token()) is UNLIMITED  # no per-call state for tokens without limits
    for _ in range(1000):
        async with limiter.admit(token()):
            pass
