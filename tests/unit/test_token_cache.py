"""The hot-path token cache: shared lookups, stale-while-refresh, bounded staleness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from imagerelay.storage.accounts import Accounts
from imagerelay.storage.db import create_engine, create_schema
from imagerelay.storage.schema import tokens

TTL = 0.3


@pytest.fixture
async def accounts(tmp_path: Path) -> AsyncIterator[Accounts]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    await create_schema(engine)
    yield Accounts(engine, cache_ttl_s=TTL)
    await engine.dispose()


async def revoke_elsewhere(accounts: Accounts, token_id: int) -> None:
    """What another gateway process does: the row changes, this process's cache does not."""
    async with accounts._engine.begin() as conn:  # noqa: SLF001 - the test plays another process
        await conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked=True))


async def test_a_revocation_elsewhere_is_seen_within_two_ttls(accounts: Accounts) -> None:
    user = await accounts.get_or_create_user("cache")
    plain = await accounts.create_token(user.id, "default")
    info = await accounts.authenticate(plain)
    assert info is not None and not info.revoked
    await revoke_elsewhere(accounts, info.id)
    assert not (await accounts.authenticate(plain)).revoked  # type: ignore[union-attr]  # cached
    await asyncio.sleep(TTL * 1.2)
    stale = await accounts.authenticate(plain)  # just expired: answered at once, refresh started
    assert stale is not None and not stale.revoked
    deadline = time.monotonic() + 2 * TTL
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        fresh = await accounts.authenticate(plain)
        if fresh is not None and fresh.revoked:
            break
    assert fresh is not None and fresh.revoked


async def test_concurrent_misses_share_one_lookup(accounts: Accounts) -> None:
    user = await accounts.get_or_create_user("herd")
    plain = await accounts.create_token(user.id, "default")
    answers = await asyncio.gather(*[accounts.authenticate(plain) for _ in range(50)])
    assert len({id(a) for a in answers}) == 1  # one lookup, one TokenInfo object for all
    assert await accounts.authenticate("sk-not-a-token") is None
