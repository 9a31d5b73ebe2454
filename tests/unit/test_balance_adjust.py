"""Admin balance adjustments keep every balance a valid, auditable integer (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from imagerelay.storage.accounts import Accounts
from imagerelay.storage.billing import MAX_BALANCE_MICROS, AdjustmentRefused, Billing
from tests.unit.test_billing_store import stores  # noqa: F401 - the fixture over both databases


async def test_a_debit_past_the_available_balance_is_refused(stores: tuple[Accounts, Billing]) -> None:  # noqa: F811
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


async def test_a_credit_past_the_maximum_is_refused(stores: tuple[Accounts, Billing]) -> None:  # noqa: F811
    accounts, billing = stores
    user = await accounts.get_or_create_user("rich")
    assert await billing.adjust(user.id, MAX_BALANCE_MICROS - 5, "nearly all") == MAX_BALANCE_MICROS - 5
    with pytest.raises(AdjustmentRefused):
        await billing.adjust(user.id, 6, "one too many")
    assert await billing.adjust(user.id, 5, "up to the line") == MAX_BALANCE_MICROS
    assert await billing.audit() == []


async def test_an_unknown_user_is_still_a_lookup_error(stores: tuple[Accounts, Billing]) -> None:  # noqa: F811
    _accounts, billing = stores
    with pytest.raises(LookupError):
        await billing.adjust(424242, -1, "nobody")
