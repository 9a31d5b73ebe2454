"""Channel cooldowns shared through real Redis: a breaker tripped by one process's pool
keeps the others' pools off the channel; an operator's enable lifts it everywhere."""

from __future__ import annotations

import logging
import time

import pytest

from imagerelay.catalog.model import ChannelSpec
from imagerelay.limits.connection import SharedRedis
from imagerelay.upstreams.base import UpstreamFailure
from imagerelay.upstreams.cooldowns import RedisCooldowns
from imagerelay.upstreams.pool import ChannelPool, PoolPolicy
from tests.support.gateway import free_port

CHANNELS = [
    ChannelSpec(name="flaky", type="simulator", pools=("p",)),
    ChannelSpec(name="steady", type="simulator", pools=("p",)),
]


def pool(cooldowns: RedisCooldowns) -> ChannelPool:
    return ChannelPool(connectors={}, policy=PoolPolicy(breaker_threshold=2, cooldown_s=30), shared=cooldowns)


async def test_a_breaker_tripped_in_one_process_cools_the_channel_in_another(redis: SharedRedis) -> None:
    # Two processes: each its own pool and cooldown view, one Redis between them.
    here, there = RedisCooldowns(redis), RedisCooldowns(redis)
    pool_here, pool_there = pool(here), pool(there)
    await there.refresh()
    assert {c.name for c in pool_there.order(CHANNELS)} == {"flaky", "steady"}

    for _ in range(2):
        pool_here._failed("flaky", UpstreamFailure("server", "500", status=500))
    await here.drain()
    await there.refresh()

    assert [c.name for c in pool_there.order(CHANNELS)] == ["steady"]
    assert 29 < pool_there.cooldown_remaining("flaky") <= 30
    assert pool_there.health_of("flaky").consecutive_failures == 0  # its own breaker saw nothing

    pool_there.enable("flaky")  # an operator re-enables it through that process's admin API
    await there.drain()
    await here.refresh()
    assert here.remaining("flaky", pool_here.clock()) == 0


async def test_a_later_trip_keeps_the_later_end(redis: SharedRedis) -> None:
    a, b = RedisCooldowns(redis), RedisCooldowns(redis)
    a.trip("ch", 60)
    await a.drain()
    b.trip("ch", 5)
    await b.drain()
    await b.refresh()
    assert b.remaining("ch", time.monotonic()) > 50


async def test_redis_down_keeps_local_cooldowns_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    shared = SharedRedis(f"redis://127.0.0.1:{free_port()}/0", backoff_s=0)
    cooldowns = RedisCooldowns(shared)
    pool_here = pool(cooldowns)
    with caplog.at_level(logging.WARNING, logger="imagerelay.shared"):
        for _ in range(2):
            pool_here._failed("flaky", UpstreamFailure("server", "500", status=500))
        await cooldowns.drain()
        await cooldowns.refresh()
        await cooldowns.refresh()
    assert [c.name for c in pool_here.order(CHANNELS)] == ["steady"]  # this process's own breaker still works
    warnings = [r for r in caplog.records if r.name == "imagerelay.shared"]
    assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()
    await cooldowns.aclose()
    await shared.aclose()
