"""The admin's channel test (``ChannelPool.probe``) is one attempt of the pool itself: the
same connector, key, timeout and answer cleaning as a real call, on exactly the named
channel whatever its health, and it leaves that health alone."""

from __future__ import annotations

from imagerelay.catalog.model import ChannelSpec
from imagerelay.domain.types import ImageRequest
from imagerelay.upstreams.base import UpstreamFailure
from imagerelay.upstreams.pool import CallOutcome, ChannelPool
from imagerelay.upstreams.registry import build_connectors
from tests.support.gateway import free_port

SECRET = "sk-probe-secret-0123456789abcdef"
PROBE = ImageRequest(
    endpoint="generations",
    model="gpt-image-2",
    prompt="a small test square",
    quality="low",
    upstream_params={"quality": "low", "size": "1024x1024"},
    size="1024x1024",
)


def _pool() -> ChannelPool:
    return ChannelPool(connectors=build_connectors(), key_resolver=lambda ch: SECRET)


async def test_a_disabled_channel_is_probed_and_its_health_is_untouched() -> None:
    pool = _pool()
    off = ChannelSpec(name="off", type="simulator", pools=("p",), enabled=False)
    assert pool.order([off]) == []  # a real call would never pick it
    outcome = await pool.probe(off, "gpt-image-2", "1024x1024", PROBE)
    assert isinstance(outcome, CallOutcome) and outcome.channel == "off" and outcome.result.items
    health = pool.health_of("off")
    assert (health.successes, health.failures) == (0, 0)
    for connector in pool.connectors.values():
        await connector.aclose()


async def test_a_failing_probe_is_returned_scrubbed_and_not_counted() -> None:
    pool = _pool()
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    dead = ChannelSpec(name="dead", type="openai", pools=("p",), base_url=base_url, timeout_s=5)
    outcome = await pool.probe(dead, "gpt-image-2", "1024x1024", PROBE)
    assert isinstance(outcome, UpstreamFailure) and outcome.retryable
    assert SECRET not in outcome.detail and "127.0.0.1" not in outcome.detail
    health = pool.health_of("dead")
    assert (health.failures, health.consecutive_failures, health.last_error) == (0, 0, None)
    for connector in pool.connectors.values():
        await connector.aclose()
