"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imagerelay.limits.connection import SharedRedis
from tests.support.services import delete_redis_prefix, fresh_redis_prefix, redis_url


@pytest.fixture
async def redis() -> AsyncIterator[SharedRedis]:
    """A connection to the test Redis under a key prefix of its own, deleted afterwards."""
    prefix = fresh_redis_prefix()
    shared = SharedRedis(redis_url(), prefix)
    try:
        yield shared
    finally:
        await shared.aclose()
        delete_redis_prefix(prefix)
