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


async def test_a_revocation_elsewhere_is_seen_within_one_ttl(tmp_path: Path) -> None:
    """Fresh for half a TTL, then served while a refresh runs: the change is seen well
    before one TTL is over (a cache fresh for the whole TTL would still answer "valid")."""
    ttl = 2.0
    engine = create_engine(f"sqlite:///{tmp_path / 'ttl.db'}")
    await create_schema(engine)
    accounts = Accounts(engine, cache_ttl_s=ttl)
    try:
        user = await accounts.get_or_create_user("cache")
        plain = await accounts.create_token(user.id, "default")
        info = await accounts.lookup_token(plain)
        assert info is not None and not info.revoked
        await revoke_elsewhere(accounts, info.id)
        assert not (await accounts.lookup_token(plain)).revoked  # type: ignore[union-attr]  # cached
        await asyncio.sleep(ttl * 0.6)
        stale = await accounts.lookup_token(plain)  # past half a TTL: answered at once, refresh started
        assert stale is not None and not stale.revoked
        deadline = time.monotonic() + ttl * 0.3  # still short of one TTL since the lookup
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            fresh = await accounts.lookup_token(plain)
            if fresh is not None and fresh.revoked:
                break
        assert fresh is not None and fresh.revoked
    finally:
        await engine.dispose()


async def test_concurrent_misses_share_one_lookup(accounts: Accounts) -> None:
    user = await accounts.get_or_create_user("herd")
    plain = await accounts.create_token(user.id, "default")
    answers = await asyncio.gather(*[accounts.lookup_token(plain) for _ in range(50)])
    assert len({id(a) for a in answers}) == 1  # one lookup, one TokenInfo object for all
    assert await accounts.lookup_token("sk-not-a-token") is None


async def test_a_flood_of_unknown_tokens_evicts_no_known_one(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'flood.db'}")
    await create_schema(engine)
    accounts = Accounts(engine, cache_ttl_s=60, known_cache_size=50, unknown_cache_size=20)
    try:
        user = await accounts.get_or_create_user("flooded")
        plains = [await accounts.create_token(user.id, "default", name=f"t{i}") for i in range(10)]
        infos = [await accounts.lookup_token(p) for p in plains]
        for i in range(500):
            assert await accounts.lookup_token(f"sk-bad-{i}") is None
        assert accounts.cached_tokens() == (10, 20)  # bounded, and the misses stayed among themselves
        for info in infos:
            assert info is not None
            await revoke_elsewhere(accounts, info.id)
        # Still answered from the cache (the database now says revoked): the entries survived.
        for plain, info in zip(plains, infos, strict=True):
            assert await accounts.lookup_token(plain) is info
    finally:
        await engine.dispose()


async def test_known_tokens_past_the_bound_evict_the_least_recent_one_by_one(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'lru.db'}")
    await create_schema(engine)
    accounts = Accounts(engine, cache_ttl_s=60, known_cache_size=3, unknown_cache_size=3)
    try:
        user = await accounts.get_or_create_user("lru")
        a, b, c, d = [await accounts.create_token(user.id, "default", name=n) for n in "abcd"]
        first = {p: await accounts.lookup_token(p) for p in (a, b, c)}
        assert await accounts.lookup_token(a) is first[a]  # a is now the most recent
        await accounts.lookup_token(d)  # evicts b only: no cliff
        assert accounts.cached_tokens() == (3, 0)
        assert await accounts.lookup_token(a) is first[a] and await accounts.lookup_token(c) is first[c]
        assert await accounts.lookup_token(b) is not first[b]  # looked up again
    finally:
        await engine.dispose()


async def test_an_unknown_answer_does_not_outlive_a_token_created_later(accounts: Accounts) -> None:
    plain = "sk-" + "x" * 40
    assert await accounts.lookup_token(plain) is None
    user = await accounts.get_or_create_user("late")
    await accounts.create_token(user.id, "default", token=plain)
    await asyncio.sleep(TTL * 2.1)
    assert await accounts.lookup_token(plain) is not None
    assert accounts.cached_tokens() == (1, 0)
