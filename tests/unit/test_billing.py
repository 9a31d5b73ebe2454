"""Holds, settle, release and audit against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from imagerelay.domain.records import UsageRecord
from imagerelay.storage.accounts import Accounts
from imagerelay.storage.billing import MAX_BALANCE_MICROS, AdjustmentRefused, AdjustmentRepeated, Billing
from imagerelay.storage.db import TransactionRunner, create_engine, create_schema
from imagerelay.storage.idempotency import IdempotencyConflict, IdempotencyStore
from imagerelay.storage.instances import Instances
from tests.support.services import drop_postgres_database, fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Accounts, Billing]]:
    dropped = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'b.db'}"
    else:
        url, dropped = fresh_postgres_database()
    engine = create_engine(url)
    await create_schema(engine)
    runner = TransactionRunner(url)
    try:
        yield Accounts(engine), Billing(engine, runner)
    finally:
        await engine.dispose()
        await runner.aclose()
        if dropped:
            drop_postgres_database(dropped)


def record(request_id: str, user_id: int, cost: int = 0, status: int = 200) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        user_id=user_id,
        token_id=1,
        group="g",
        model="m",
        route="r",
        endpoint="generations",
        status=status,
        billing_mode="per_call",
        latency_ms=1,
        cost_micros=cost,
    )


async def test_hold_settle_release_and_audit(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    assert await billing.adjust(user.id, 100_000, "top up") == 100_000
    assert await billing.place_hold("r1", user.id, 60_000, ttl_s=60) == "ok"
    assert await billing.place_hold("r2", user.id, 60_000, ttl_s=60) == "balance"  # only 40_000 available
    assert await billing.settle(record("r1", user.id, cost=30_000)) == 30_000
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (70_000, 0)
    assert await billing.place_hold("r3", user.id, 70_000, ttl_s=60) == "ok"
    await billing.release(record("r3", user.id, status=502))
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (70_000, 0)
    assert await billing.audit() == []


async def test_charge_never_exceeds_hold(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 50_000, "top up")
    assert await billing.place_hold("r1", user.id, 50_000, ttl_s=60) == "ok"
    rec = record("r1", user.id, cost=80_000)
    assert await billing.settle(rec) == 50_000
    assert rec.price_basis["capped_from_micros"] == 80_000
    u = await accounts.get_user(user.id)
    assert u is not None and u.balance_micros == 0
    assert await billing.audit() == []


async def test_stale_holds_are_released(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 10_000, "top up")
    assert await billing.place_hold("crashed", user.id, 10_000, ttl_s=-1) == "ok"
    assert any("past their deadline" in p for p in await billing.audit())
    assert await billing.release_stale_holds() == 1
    u = await accounts.get_user(user.id)
    assert u is not None and u.held_micros == 0
    assert await billing.audit() == []


async def test_concurrent_holds_never_overspend(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 50 * 30_000, "exactly fifty calls")

    async def call(i: int) -> bool:
        if await billing.place_hold(f"r{i}", user.id, 30_000, ttl_s=60) != "ok":
            await billing.record_only(record(f"r{i}", user.id, status=429))
            return False
        await asyncio.sleep(0)
        await billing.settle(record(f"r{i}", user.id, cost=30_000))
        return True

    results = await asyncio.gather(*(call(i) for i in range(200)))
    assert sum(results) == 50
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (0, 0)
    assert await billing.audit() == []


async def test_audit_detects_tampering(stores: tuple[Accounts, Billing]) -> None:
    from sqlalchemy import update

    from imagerelay.storage.schema import users

    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 1_000, "top up")
    async with billing._engine.begin() as conn:  # noqa: SLF001 - simulate a bad write
        await conn.execute(update(users).values(balance_micros=5_000))
    problems = await billing.audit()
    assert any("ledger sum" in p for p in problems)


async def test_adjust_needs_reason(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    with pytest.raises(ValueError):
        await billing.adjust(user.id, 1, "")


async def test_an_adjustment_with_a_once_key_happens_once_even_when_raced(stores: tuple[Accounts, Billing]) -> None:
    """What the demo credit relies on when several hosts start with --demo on one database,
    or one restarts after its demo user spent everything: the key makes repeats no-ops."""
    accounts, billing = stores
    user = await accounts.get_or_create_user("once")
    outcomes = await asyncio.gather(
        *(billing.adjust(user.id, 5_000_000, "demo credit", once=f"demo-credit-{user.id}") for _ in range(6)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, int) for o in outcomes) == 1, outcomes
    assert all(isinstance(o, AdjustmentRepeated) for o in outcomes if not isinstance(o, int)), outcomes
    assert (await accounts.get_user(user.id)).balance_micros == 5_000_000
    await billing.adjust(user.id, -5_000_000, "spent", kind="adjust")  # without a key: as often as asked
    with pytest.raises(AdjustmentRepeated):
        await billing.adjust(user.id, 5_000_000, "demo credit", once=f"demo-credit-{user.id}")
    assert (await accounts.get_user(user.id)).balance_micros == 0
    assert not await billing.audit()


async def test_token_spend_cap(stores: tuple[Accounts, Billing]) -> None:
    from imagerelay.domain.accounts import TokenLimits

    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 1_000_000, "top up")
    plain = await accounts.create_token(user.id, "default", limits=TokenLimits(spend_cap_micros=50_000))
    info = await accounts.lookup_token(plain)
    assert info is not None and info.spend_cap_micros == 50_000
    assert await billing.place_hold("a", user.id, 30_000, 60, token_id=info.id) == "ok"
    assert await billing.place_hold("b", user.id, 30_000, 60, token_id=info.id) == "spend_cap"
    rec = record("a", user.id, cost=20_000)
    rec.token_id = info.id
    await billing.settle(rec)
    assert await billing.place_hold("b", user.id, 30_000, 60, token_id=info.id) == "ok"
    assert await billing.place_hold("c", user.id, 1, 60, token_id=info.id) == "spend_cap"
    rec_b = record("b", user.id)
    rec_b.token_id = info.id
    await billing.release(rec_b)
    u = await accounts.get_user(user.id)
    assert u is not None and u.balance_micros == 980_000 and u.held_micros == 0  # the refused hold left nothing
    assert await billing.audit() == []


async def _count(billing: Billing, sql: str, **params: object) -> int:
    from sqlalchemy import text

    async with billing._engine.connect() as conn:  # noqa: SLF001 - read what the money path wrote
        return int((await conn.execute(text(sql), params)).scalar_one())


async def test_fifty_concurrent_holds_against_room_for_ten(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 10 * 30_000, "exactly ten holds")
    token = await accounts.lookup_token(await accounts.create_token(user.id, "default"))
    assert token is not None

    results = await asyncio.gather(
        *(billing.place_hold(f"r{i}", user.id, 30_000, ttl_s=60, token_id=token.id) for i in range(50))
    )
    assert results.count("ok") == 10 and results.count("balance") == 40
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (300_000, 300_000)
    assert await _count(billing, "SELECT count(*) FROM holds") == 10
    assert await _count(billing, "SELECT held_micros FROM tokens WHERE id = :t", t=token.id) == 300_000
    for i, result in enumerate(results):
        if result == "ok":
            await billing.release(record(f"r{i}", user.id, status=502))
    assert await billing.audit() == []


async def test_one_failing_movement_among_concurrent_ones_fails_alone(stores: tuple[Accounts, Billing]) -> None:
    """Concurrent movements of one kind share a transaction on PostgreSQL
    (storage/pg_batches.py) and a commit on SQLite: one that fails (a hold under a
    request id that already has one) must fail alone, and every other one happen
    exactly once."""
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 100 * 1_000, "room for a hundred")
    assert await billing.place_hold("taken", user.id, 1_000, ttl_s=60) == "ok"

    holds = [billing.place_hold(f"r{i}", user.id, 1_000, ttl_s=60) for i in range(10)]
    holds.insert(5, billing.place_hold("taken", user.id, 1_000, ttl_s=60))  # one in the middle of the batch
    results = await asyncio.gather(*holds, return_exceptions=True)
    failure = results[5]
    assert isinstance(failure, Exception) and ("duplicate" in str(failure) or "UNIQUE" in str(failure)), failure
    assert results[:5] + results[6:] == ["ok"] * 10
    u = await accounts.get_user(user.id)
    assert u is not None and u.held_micros == 11 * 1_000  # the ten new holds, each once, and the first
    assert await _count(billing, "SELECT count(*) FROM holds") == 11

    # A settle batch with a repeat in it (the first settle stands, and is not charged twice).
    assert await billing.settle(record("taken", user.id, cost=700)) == 700
    settles = [billing.settle(record(f"r{i}", user.id, cost=100 + i)) for i in range(10)]
    settles.insert(3, billing.settle(record("taken", user.id, cost=900)))
    charged = await asyncio.gather(*settles)
    assert charged == [100, 101, 102, 700, 103, 104, 105, 106, 107, 108, 109]
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (100_000 - 700 - sum(range(100, 110)), 0)
    assert await _count(billing, "SELECT count(*) FROM usage_records") == 11
    assert await billing.audit() == []


async def test_concurrent_holds_never_pass_the_spend_cap(stores: tuple[Accounts, Billing]) -> None:
    from imagerelay.domain.accounts import TokenLimits

    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 10 * 30_000, "room for ten")
    plain = await accounts.create_token(user.id, "default", limits=TokenLimits(spend_cap_micros=5 * 30_000))
    token = await accounts.lookup_token(plain)
    assert token is not None

    results = await asyncio.gather(
        *(billing.place_hold(f"r{i}", user.id, 30_000, ttl_s=60, token_id=token.id) for i in range(50))
    )
    assert results.count("ok") == 5 and results.count("spend_cap") == 45
    u = await accounts.get_user(user.id)
    assert u is not None and u.held_micros == 5 * 30_000  # a refused hold leaves nothing held
    for i, result in enumerate(results):
        if result == "ok":
            rec = record(f"r{i}", user.id, cost=30_000)
            rec.token_id = token.id
            assert await billing.settle(rec) == 30_000
    assert await billing.place_hold("more", user.id, 1, ttl_s=60, token_id=token.id) == "spend_cap"
    assert await billing.audit() == []


async def test_settle_and_release_are_idempotent(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 100_000, "top up")

    assert await billing.place_hold("s", user.id, 40_000, ttl_s=60) == "ok"
    assert await billing.settle(record("s", user.id, cost=25_000)) == 25_000
    again = record("s", user.id, cost=25_000)
    assert await billing.settle(again) == 25_000 and again.cost_micros == 25_000  # the first outcome
    await billing.release(record("s", user.id, status=502))  # a late release changes nothing either

    assert await billing.place_hold("f", user.id, 40_000, ttl_s=60) == "ok"
    await billing.release(record("f", user.id, status=502))
    await billing.release(record("f", user.id, status=502))
    assert await billing.settle(record("f", user.id, cost=25_000)) == 0  # released first: stays free

    await billing.record_only(record("refused", user.id, status=400))
    await billing.record_only(record("refused", user.id, status=400))

    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (75_000, 0)
    assert await _count(billing, "SELECT count(*) FROM usage_records") == 3
    assert await _count(billing, "SELECT count(*) FROM ledger WHERE kind = 'charge'") == 1
    assert await billing.audit() == []


async def test_settle_after_the_reconciler_released_the_hold(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 50_000, "top up")
    assert await billing.place_hold("late", user.id, 30_000, ttl_s=-1) == "ok"
    assert await billing.place_hold("later", user.id, 20_000, ttl_s=-1) == "ok"
    assert await billing.release_stale_holds() == 2
    # The balance still covers the first call's price: it is charged without a hold.
    assert await billing.settle(record("late", user.id, cost=30_000)) == 30_000
    assert await billing.place_hold("other", user.id, 15_000, ttl_s=60) == "ok"
    # Only 5_000 is available now: the second call's price goes uncollected.
    rec = record("later", user.id, cost=20_000)
    assert await billing.settle(rec) == 0
    assert rec.price_basis["uncollected_micros"] == 20_000
    await billing.release(record("other", user.id, status=502))
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (20_000, 0)
    assert await billing.audit() == []


async def test_every_call_leaves_one_usage_record_under_concurrency(stores: tuple[Accounts, Billing]) -> None:
    """Holds, settles, releases, refusals and the reconciler all at once, on one user
    and one token: no deadlock, no overspend, one record per call, books balanced."""
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 60 * 10_000, "room for sixty")
    token = await accounts.lookup_token(await accounts.create_token(user.id, "default"))
    assert token is not None

    async def call(i: int) -> None:
        rid = f"c{i}"
        rec = record(rid, user.id, cost=10_000 if i % 3 else 4_000)
        rec.token_id = token.id
        # Every seventh hold is born stale, so the reconciler races its settle.
        if await billing.place_hold(rid, user.id, 10_000, ttl_s=-1 if i % 7 == 0 else 60, token_id=token.id) != "ok":
            rec.status = 429
            await billing.record_only(rec)
            return
        await asyncio.sleep(0)
        if i % 5 == 0:
            rec.status = 502
            await billing.release(rec)
        else:
            await billing.settle(rec)

    async def reconcile() -> None:
        for _ in range(20):
            await billing.release_stale_holds()
            await asyncio.sleep(0)

    await asyncio.gather(*(call(i) for i in range(150)), reconcile())
    await billing.release_stale_holds()
    assert await _count(billing, "SELECT count(*) FROM usage_records") == 150
    assert await _count(billing, "SELECT count(DISTINCT request_id) FROM usage_records") == 150
    assert await _count(billing, "SELECT count(*) FROM holds") == 0
    u = await accounts.get_user(user.id)
    assert u is not None and u.balance_micros >= 0 and u.held_micros == 0
    assert await billing.audit() == []


# -- crash recovery: the holds and claims of a process that is gone --------------------


def _instances(billing: Billing, lock_dir: Path | None, lease_s: float = 30.0) -> Instances:
    return Instances(billing._engine, lock_dir, lease_s=lease_s)  # noqa: SLF001 - the same database


def _die(process: Instances) -> None:
    """What kill -9 does to a process's lock: the kernel drops it (its row stays)."""
    assert process._lock_fd is not None  # noqa: SLF001
    os.close(process._lock_fd)  # noqa: SLF001


async def _sweep(billing: Billing, survivor: Instances, **kw: Any) -> int:
    gone = await survivor.dead(await billing.hold_owners())
    released = await billing.release_stale_holds(gone=gone, **kw)
    await survivor.forget(gone)
    return released


async def test_a_dead_process_s_calls_are_released_with_one_record_each(
    stores: tuple[Accounts, Billing], tmp_path: Path
) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 100_000, "top up")
    token = await accounts.lookup_token(await accounts.create_token(user.id, "default"))
    assert token is not None
    crashed, survivor = _instances(billing, tmp_path), _instances(billing, tmp_path)
    await crashed.register()
    await survivor.register()
    gateway = Billing(billing._engine, billing._runner, instance_id=crashed.id)  # noqa: SLF001
    for rid in ("sync", "stream"):
        call = record(rid, user.id, status=0)
        call.token_id = token.id
        assert await gateway.place_hold(rid, user.id, 20_000, ttl_s=600, token_id=token.id, call=call) == "ok"
    # A job's hold names no process: the job's re-run after a restart settles it.
    assert await gateway.place_hold("job", user.id, 20_000, ttl_s=600, token_id=token.id) == "ok"

    assert await _sweep(billing, survivor) == 0  # alive: its lock is held, nothing is touched
    _die(crashed)
    assert await _sweep(billing, survivor) == 2
    assert await _sweep(billing, survivor) == 0  # a second sweep (or a racing peer) changes nothing

    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (100_000, 20_000)  # the job's hold
    assert await _count(billing, "SELECT count(*) FROM holds WHERE request_id = 'job'") == 1
    assert (
        await _count(
            billing,
            "SELECT count(*) FROM usage_records WHERE status = 499 AND error_code = 'interrupted' "
            "AND cost_micros = 0 AND model = 'm' AND route = 'r' AND token_id = :t",
            t=token.id,
        )
        == 2
    )
    assert await _count(billing, "SELECT count(*) FROM usage_records") == 2
    assert await _count(billing, "SELECT held_micros FROM tokens WHERE id = :t", t=token.id) == 20_000
    assert not (tmp_path / f"{crashed.id}.lock").exists()
    assert await billing.audit() == []
    # If the "dead" call did finish after all, the release stands: free, never twice.
    assert await gateway.settle(record("sync", user.id, cost=20_000)) == 0
    assert await billing.audit() == []


async def test_a_process_elsewhere_is_gone_once_its_lease_lapses(
    stores: tuple[Accounts, Billing], tmp_path: Path
) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 100_000, "top up")
    elsewhere = _instances(billing, None)  # another machine: no lock file here
    survivor = _instances(billing, tmp_path)
    await elsewhere.register()
    await survivor.register()
    gateway = Billing(billing._engine, billing._runner, instance_id=elsewhere.id)  # noqa: SLF001
    assert await gateway.place_hold("a", user.id, 10_000, ttl_s=600, call=record("a", user.id)) == "ok"
    assert await _sweep(billing, survivor) == 0  # its lease runs
    assert await survivor.dead() == set()
    async with billing._engine.begin() as conn:  # noqa: SLF001 - the lease lapses
        await conn.execute(text("UPDATE instances SET expires_at = 0 WHERE id = :i"), {"i": elsewhere.id})
    assert any("processes that are gone" in p for p in await billing.audit())
    assert await _sweep(billing, survivor) == 1
    # Its row is forgotten; a hold naming a process without a row is released too.
    assert await survivor.dead() == set()
    assert await gateway.place_hold("b", user.id, 10_000, ttl_s=600, call=record("b", user.id)) == "ok"
    assert await _sweep(billing, survivor) == 1
    assert await _count(billing, "SELECT count(*) FROM usage_records WHERE error_code = 'interrupted'") == 2
    # The process was only stalled: renewing writes its row back (with a warning).
    await elsewhere.renew()
    assert await survivor.dead() == set()
    assert await billing.audit() == []


async def test_past_its_deadline_a_dead_process_s_hold_still_gets_its_record(
    stores: tuple[Accounts, Billing], tmp_path: Path
) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("u")
    await billing.adjust(user.id, 100_000, "top up")
    crashed, survivor = _instances(billing, tmp_path), _instances(billing, tmp_path)
    await crashed.register()
    await survivor.register()
    gateway = Billing(billing._engine, billing._runner, instance_id=crashed.id)  # noqa: SLF001
    assert await gateway.place_hold("old", user.id, 10_000, ttl_s=-1, call=record("old", user.id)) == "ok"
    _die(crashed)
    async with billing._engine.begin() as conn:  # noqa: SLF001
        await conn.execute(text("UPDATE instances SET expires_at = 0 WHERE id = :i"), {"i": crashed.id})
    # The deadline pass leaves it to the pass that writes its record.
    assert await billing.release_stale_holds() == 0
    assert await _sweep(billing, survivor) == 1
    assert await _count(billing, "SELECT count(*) FROM usage_records WHERE error_code = 'interrupted'") == 1
    assert await billing.audit() == []


async def test_a_retry_takes_over_the_idempotency_claim_of_a_dead_process(
    stores: tuple[Accounts, Billing], tmp_path: Path
) -> None:
    _accounts, billing = stores
    engine = billing._engine  # noqa: SLF001
    crashed, survivor = _instances(billing, tmp_path), _instances(billing, tmp_path)
    await crashed.register()
    await survivor.register()
    first = IdempotencyStore(engine, instances=crashed, running_ttl_s=600)
    retry = IdempotencyStore(engine, instances=survivor, running_ttl_s=600, wait_s=0.3, poll_s=0.05)
    assert await first.claim(1, "k", "fp") is None
    with pytest.raises(IdempotencyConflict, match="still running"):
        await retry.claim(1, "k", "fp")  # the first call's process is alive: wait for it
    _die(crashed)
    assert await retry.claim(1, "k", "fp") is None  # gone: the retry runs
    await first.finish(1, "k", 200, b"late")  # a claim taken over is no longer the first's to end
    await retry.finish(1, "k", 200, b"answer")
    replay = await retry.claim(1, "k", "fp")
    assert replay is not None and replay.body == b"answer"


@pytest.mark.timing
async def test_a_running_claim_older_than_a_call_can_last_is_taken_over(stores: tuple[Accounts, Billing]) -> None:
    _accounts, billing = stores
    engine = billing._engine  # noqa: SLF001
    first = IdempotencyStore(engine, running_ttl_s=0.2)
    retry = IdempotencyStore(engine, running_ttl_s=0.2, wait_s=5, poll_s=0.05)
    assert await first.claim(1, "k", "fp") is None
    started = time.monotonic()
    assert await retry.claim(1, "k", "fp") is None
    assert time.monotonic() - started < 4


# -- merged from test_balance_adjust.py: Admin balance adjustments keep every balance a valid,
# auditable integer (SQLite and PostgreSQL).


async def test_a_debit_past_the_available_balance_is_refused(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("debtor")
    await billing.adjust(user.id, 100_000, "top up")
    assert await billing.place_hold("r1", user.id, 60_000, ttl_s=60) == "ok"  # 40_000 available
    with pytest.raises(AdjustmentRefused) as refused:
        await billing.adjust(user.id, -40_001, "too much", kind="adjust")
    assert refused.value.available_micros == 40_000
    assert await billing.adjust(user.id, -40_000, "exactly what is free", kind="adjust") == 60_000
    with pytest.raises(AdjustmentRefused):
        await billing.adjust(user.id, -1, "nothing left", kind="adjust")
    u = await accounts.get_user(user.id)
    assert u is not None and (u.balance_micros, u.held_micros) == (60_000, 60_000)
    await billing.release_stale_holds(now=10**12)
    assert await billing.audit() == []


async def test_a_credit_past_the_maximum_is_refused(stores: tuple[Accounts, Billing]) -> None:
    accounts, billing = stores
    user = await accounts.get_or_create_user("rich")
    assert await billing.adjust(user.id, MAX_BALANCE_MICROS - 5, "nearly all") == MAX_BALANCE_MICROS - 5
    with pytest.raises(AdjustmentRefused):
        await billing.adjust(user.id, 6, "one too many")
    assert await billing.adjust(user.id, 5, "up to the line") == MAX_BALANCE_MICROS
    assert await billing.audit() == []


async def test_an_unknown_user_is_still_a_lookup_error(stores: tuple[Accounts, Billing]) -> None:
    _accounts, billing = stores
    with pytest.raises(LookupError):
        await billing.adjust(424242, -1, "nobody")


@pytest.mark.parametrize("setting", [None, "off"])
async def test_the_money_connections_commit_as_configured(setting: str | None) -> None:
    """IMAGERELAY_DB_SYNCHRONOUS_COMMIT reaches the money statements' connections on
    PostgreSQL; unset, they commit as the server says (on by default)."""
    url, dropped = fresh_postgres_database()
    runner = TransactionRunner(url, pg_synchronous_commit=setting)
    try:
        import asyncpg

        plain = await asyncpg.connect(url)  # a connection with the server's settings
        try:
            server = await plain.fetchval("SHOW synchronous_commit")
        finally:
            await plain.close()
        row = await runner.fetchrow("SHOW synchronous_commit")
        assert row[0] == (setting or server)
    finally:
        await runner.aclose()
        drop_postgres_database(dropped)
