"""Balances, holds, the ledger and usage records: every money movement is here.

Invariants (checked by ``audit``):
- ``users.balance_micros`` equals the sum of the user's ledger entries;
- ``users.held_micros`` equals the sum of the user's open holds;
- every call leaves exactly one usage record, written in the same transaction as
  its settle or release; a charge's ledger entry carries the call's request id.

A hold is one conditional UPDATE (``balance - held >= amount``) plus one INSERT in a
single transaction: two round trips on the hot path before the upstream call, and
one transaction after it. Nothing is lost on a crash: an open hold past its
deadline is released by :meth:`Billing.release_stale_holds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from typing import Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagerelay.domain.types import Usage
from imagerelay.storage.schema import holds, ledger, tokens, usage_records, users

HoldResult = Literal["ok", "balance", "spend_cap"]


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    user_id: int
    token_id: int
    group: str
    model: str
    route: str
    endpoint: str
    status: int
    billing_mode: str
    latency_ms: int
    channel: str | None = None
    error_code: str | None = None
    upstream_latency_ms: int | None = None
    attempts: int = 0
    usage: Usage | None = None
    cost_micros: int = 0
    price_basis: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        u = self.usage or Usage()
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "token_id": self.token_id,
            "group_name": self.group,
            "model": self.model,
            "route": self.route,
            "channel": self.channel,
            "endpoint": self.endpoint,
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": self.latency_ms,
            "upstream_latency_ms": self.upstream_latency_ms,
            "attempts": self.attempts,
            "input_text_tokens": u.input_text_tokens,
            "input_image_tokens": u.input_image_tokens,
            "cached_tokens": u.cached_text_tokens + u.cached_image_tokens,
            "output_tokens": u.output_tokens,
            "cost_micros": self.cost_micros,
            "billing_mode": self.billing_mode,
            "price_basis": orjson.dumps(self.price_basis).decode(),
            "created_at": time.time(),
        }


class Billing:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def adjust(self, user_id: int, amount_micros: int, reason: str, *, kind: str = "topup") -> int:
        """Top up (positive) or adjust (either sign) a balance; returns the new balance."""
        if not reason:
            raise ValueError("a balance change needs a reason")
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(balance_micros=users.c.balance_micros + amount_micros)
            )
            if res.rowcount != 1:
                raise LookupError(f"no user {user_id}")
            await conn.execute(
                ledger.insert().values(
                    user_id=user_id, amount_micros=amount_micros, kind=kind, reason=reason, created_at=time.time()
                )
            )
            bal = (await conn.execute(select(users.c.balance_micros).where(users.c.id == user_id))).scalar_one()
        return int(bal)

    async def place_hold(
        self, request_id: str, user_id: int, amount_micros: int, ttl_s: float, *, token_id: int | None = None
    ) -> HoldResult:
        """Reserve ``amount_micros`` against the balance and the token's spend cap."""
        now = time.time()
        async with self._engine.connect() as conn:
            async with conn.begin() as tx:
                res = await conn.execute(
                    update(users)
                    .where(
                        users.c.id == user_id,
                        users.c.balance_micros - users.c.held_micros >= amount_micros,
                    )
                    .values(held_micros=users.c.held_micros + amount_micros)
                )
                if res.rowcount != 1:
                    await tx.rollback()
                    return "balance"
                if token_id is not None:
                    res = await conn.execute(
                        update(tokens)
                        .where(
                            tokens.c.id == token_id,
                            or_(
                                tokens.c.spend_cap_micros.is_(None),
                                tokens.c.spend_cap_micros - tokens.c.spent_micros - tokens.c.held_micros
                                >= amount_micros,
                            ),
                        )
                        .values(held_micros=tokens.c.held_micros + amount_micros)
                    )
                    if res.rowcount != 1:
                        await tx.rollback()
                        return "spend_cap"
                await conn.execute(
                    holds.insert().values(
                        request_id=request_id,
                        user_id=user_id,
                        token_id=token_id,
                        amount_micros=amount_micros,
                        deadline=now + ttl_s,
                        created_at=now,
                    )
                )
        return "ok"

    async def settle(self, record: UsageRecord) -> int:
        """Charge the call and close its hold; returns the amount actually charged.

        The charge never exceeds the hold: the hold was the caller's worst case, and
        charging more could take a concurrent balance below zero.
        """
        async with self._engine.begin() as conn:
            hold = await _take_hold(conn, record.request_id)
            cost = record.cost_micros
            if hold is not None:
                hold_amount, hold_token = hold
                if cost > hold_amount:
                    record.price_basis["capped_from_micros"] = cost
                    cost = hold_amount
                await conn.execute(
                    update(users)
                    .where(users.c.id == record.user_id)
                    .values(
                        balance_micros=users.c.balance_micros - cost,
                        held_micros=users.c.held_micros - hold_amount,
                    )
                )
                if hold_token is not None:
                    await conn.execute(
                        update(tokens)
                        .where(tokens.c.id == hold_token)
                        .values(
                            spent_micros=tokens.c.spent_micros + cost,
                            held_micros=tokens.c.held_micros - hold_amount,
                        )
                    )
            else:
                # The reconciler released this hold (we ran past its deadline): charge only
                # what the balance can still cover, never below zero.
                res = await conn.execute(
                    update(users)
                    .where(users.c.id == record.user_id, users.c.balance_micros - users.c.held_micros >= cost)
                    .values(balance_micros=users.c.balance_micros - cost)
                )
                if res.rowcount != 1:
                    record.price_basis["uncollected_micros"] = cost
                    cost = 0
            record.cost_micros = cost
            if cost:
                await conn.execute(
                    ledger.insert().values(
                        user_id=record.user_id,
                        amount_micros=-cost,
                        kind="charge",
                        reason=f"{record.endpoint} {record.model} ({record.group})",
                        request_id=record.request_id,
                        created_at=time.time(),
                    )
                )
            await conn.execute(usage_records.insert().values(**record.row()))
        return cost

    async def release(self, record: UsageRecord) -> None:
        """Close a failed call's hold without charging, and record it."""
        record.cost_micros = 0
        async with self._engine.begin() as conn:
            hold = await _take_hold(conn, record.request_id)
            if hold is not None:
                await _unhold(conn, record.user_id, *hold)
            await conn.execute(usage_records.insert().values(**record.row()))

    async def record_only(self, record: UsageRecord) -> None:
        """A call refused before any hold (bad input, no balance): record it, charge nothing."""
        record.cost_micros = 0
        async with self._engine.begin() as conn:
            await conn.execute(usage_records.insert().values(**record.row()))

    async def release_stale_holds(self, now: float | None = None) -> int:
        """Release holds past their deadline (a crash mid-call). Returns how many."""
        now = time.time() if now is None else now
        released = 0
        async with self._engine.begin() as conn:
            rows = (await conn.execute(select(holds).where(holds.c.deadline < now))).mappings().all()
            for row in rows:
                res = await conn.execute(delete(holds).where(holds.c.request_id == row["request_id"]))
                if res.rowcount == 1:
                    await _unhold(conn, row["user_id"], int(row["amount_micros"]), row["token_id"])
                    released += 1
        return released

    async def audit(self) -> list[str]:
        """Every invariant violation, as sentences; empty when the books balance."""
        problems: list[str] = []
        now = time.time()
        async with self._engine.connect() as conn:
            ledger_sums = dict(
                (await conn.execute(
                    select(ledger.c.user_id, func.coalesce(func.sum(ledger.c.amount_micros), 0)).group_by(ledger.c.user_id)
                )).all()
            )
            hold_sums = dict(
                (await conn.execute(
                    select(holds.c.user_id, func.coalesce(func.sum(holds.c.amount_micros), 0)).group_by(holds.c.user_id)
                )).all()
            )
            for row in (await conn.execute(select(users))).mappings():
                uid = row["id"]
                if int(row["balance_micros"]) != int(ledger_sums.get(uid, 0)):
                    problems.append(
                        f"user {row['name']}: balance {row['balance_micros']} != ledger sum {ledger_sums.get(uid, 0)}"
                    )
                if int(row["held_micros"]) != int(hold_sums.get(uid, 0)):
                    problems.append(
                        f"user {row['name']}: held {row['held_micros']} != open holds {hold_sums.get(uid, 0)}"
                    )
                if int(row["balance_micros"]) < 0:
                    problems.append(f"user {row['name']}: negative balance {row['balance_micros']}")
            token_holds = dict(
                (await conn.execute(
                    select(holds.c.token_id, func.coalesce(func.sum(holds.c.amount_micros), 0))
                    .where(holds.c.token_id.is_not(None)).group_by(holds.c.token_id)
                )).all()
            )
            token_costs = dict(
                (await conn.execute(
                    select(usage_records.c.token_id, func.coalesce(func.sum(usage_records.c.cost_micros), 0))
                    .group_by(usage_records.c.token_id)
                )).all()
            )
            for row in (await conn.execute(select(tokens.c.id, tokens.c.name, tokens.c.held_micros, tokens.c.spent_micros))).mappings():
                if int(row["held_micros"]) != int(token_holds.get(row["id"], 0)):
                    problems.append(f"token {row['id']} ({row['name']}): held {row['held_micros']} != open holds")
                if int(row["spent_micros"]) != int(token_costs.get(row["id"], 0)):
                    problems.append(f"token {row['id']} ({row['name']}): spent {row['spent_micros']} != its usage records")
            stale = (await conn.execute(select(func.count()).select_from(holds).where(holds.c.deadline < now))).scalar_one()
            if stale:
                problems.append(f"{stale} open hold(s) past their deadline")
            mismatched = (
                await conn.execute(
                    select(func.count())
                    .select_from(usage_records.outerjoin(ledger, ledger.c.request_id == usage_records.c.request_id))
                    .where(
                        and_(
                            usage_records.c.cost_micros != func.coalesce(-ledger.c.amount_micros, 0),
                        )
                    )
                )
            ).scalar_one()
            if mismatched:
                problems.append(f"{mismatched} usage record(s) whose cost differs from their ledger charge")
            orphans = (
                await conn.execute(
                    select(func.count())
                    .select_from(ledger.outerjoin(usage_records, ledger.c.request_id == usage_records.c.request_id))
                    .where(ledger.c.kind == "charge", usage_records.c.id.is_(None))
                )
            ).scalar_one()
            if orphans:
                problems.append(f"{orphans} charge(s) without a usage record")
        return problems


async def _take_hold(conn: AsyncConnection, request_id: str) -> tuple[int, int | None] | None:
    """Delete the call's hold; (amount, token id), or None if it was already released."""
    row = (
        await conn.execute(select(holds.c.amount_micros, holds.c.token_id).where(holds.c.request_id == request_id))
    ).first()
    if row is None:
        return None
    res = await conn.execute(delete(holds).where(holds.c.request_id == request_id))
    return (int(row[0]), row[1]) if res.rowcount == 1 else None


async def _unhold(conn: AsyncConnection, user_id: int, amount: int, token_id: int | None) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(held_micros=users.c.held_micros - amount)
    )
    if token_id is not None:
        await conn.execute(
            update(tokens).where(tokens.c.id == token_id).values(held_micros=tokens.c.held_micros - amount)
        )


@dataclass(frozen=True, slots=True)
class UsageQuery:
    user_id: int | None = None  # None: everyone (admins)
    since: float | None = None
    until: float | None = None
    model: str | None = None
    status: int | None = None
    limit: int = 50
    before_id: int | None = None  # page backwards from this record id


async def usage_page(engine: AsyncEngine, q: UsageQuery) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; returns (records, has_more)."""
    stmt = select(usage_records).order_by(usage_records.c.id.desc()).limit(q.limit + 1)
    if q.user_id is not None:
        stmt = stmt.where(usage_records.c.user_id == q.user_id)
    if q.since is not None:
        stmt = stmt.where(usage_records.c.created_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(usage_records.c.created_at < q.until)
    if q.model is not None:
        stmt = stmt.where(usage_records.c.model == q.model)
    if q.status is not None:
        stmt = stmt.where(usage_records.c.status == q.status)
    if q.before_id is not None:
        stmt = stmt.where(usage_records.c.id < q.before_id)
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    for r in rows:
        r["price_basis"] = orjson.loads(r["price_basis"] or "{}")
    return rows[: q.limit], len(rows) > q.limit
