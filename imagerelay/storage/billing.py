"""Balances, holds, the ledger and usage records: every money movement is here.

Invariants (checked by ``audit``):
- ``users.balance_micros`` equals the sum of the user's ledger entries;
- ``users.held_micros`` equals the sum of the user's open holds;
- every call leaves exactly one usage record, written in the same transaction as
  its settle or release; a charge's ledger entry carries the call's request id.

A hold is one conditional UPDATE (``balance - held >= amount``) plus one INSERT in a
single transaction before the upstream call, and settle/release one transaction
after it. Nothing is lost on a crash: an open hold past its
deadline is released by :meth:`Billing.release_stale_holds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from typing import Literal

import orjson

from sqlalchemy import and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.types import Usage
from imagerelay.storage.db import Connection, TransactionRunner
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


# Pre-built statements: compiled once, reused by every call (see TransactionRunner).
_HOLD_USER = text(
    "UPDATE users SET held_micros = held_micros + :amount "
    "WHERE id = :user_id AND balance_micros - held_micros >= :amount"
)
_HOLD_TOKEN = text(
    "UPDATE tokens SET held_micros = held_micros + :amount WHERE id = :token_id "
    "AND (spend_cap_micros IS NULL OR spend_cap_micros - spent_micros - held_micros >= :amount)"
)
_INSERT_HOLD = text(
    "INSERT INTO holds (request_id, user_id, token_id, amount_micros, deadline, created_at) "
    "VALUES (:request_id, :user_id, :token_id, :amount, :deadline, :now)"
)
# Deleting first (with RETURNING) makes settle/release a writer from its first
# statement, so SQLite never has to upgrade a read snapshot to a write lock.
_TAKE_HOLD = text("DELETE FROM holds WHERE request_id = :request_id RETURNING amount_micros, token_id")
_CHARGE_USER = text(
    "UPDATE users SET balance_micros = balance_micros - :cost, held_micros = held_micros - :hold WHERE id = :user_id"
)
_CHARGE_TOKEN = text(
    "UPDATE tokens SET spent_micros = spent_micros + :cost, held_micros = held_micros - :hold WHERE id = :token_id"
)
_CHARGE_UNHELD = text(
    "UPDATE users SET balance_micros = balance_micros - :cost "
    "WHERE id = :user_id AND balance_micros - held_micros >= :cost"
)
_SPEND_TOKEN = text("UPDATE tokens SET spent_micros = spent_micros + :cost WHERE id = :token_id")
_UNHOLD_USER = text("UPDATE users SET held_micros = held_micros - :hold WHERE id = :user_id")
_UNHOLD_TOKEN = text("UPDATE tokens SET held_micros = held_micros - :hold WHERE id = :token_id")
_LEDGER = text(
    "INSERT INTO ledger (user_id, amount_micros, kind, reason, request_id, created_at) "
    "VALUES (:user_id, :amount, :kind, :reason, :request_id, :now)"
)
_ADJUST = text("UPDATE users SET balance_micros = balance_micros + :amount WHERE id = :user_id RETURNING balance_micros")
_TAKE_STALE = text(
    "DELETE FROM holds WHERE deadline < :now RETURNING user_id, token_id, amount_micros"
)
_INSERT_USAGE = text(
    f"INSERT INTO usage_records ({', '.join(c.name for c in usage_records.columns if c.name != 'id')}) "
    f"VALUES ({', '.join(':' + c.name for c in usage_records.columns if c.name != 'id')})"
)


def _hold_tx(conn: Connection, request_id: str, user_id: int, amount: int, ttl_s: float,
             token_id: int | None) -> HoldResult:
    if conn.execute(_HOLD_USER, {"amount": amount, "user_id": user_id}).rowcount != 1:
        conn.rollback()
        return "balance"
    if token_id is not None and conn.execute(_HOLD_TOKEN, {"amount": amount, "token_id": token_id}).rowcount != 1:
        conn.rollback()
        return "spend_cap"
    now = time.time()
    conn.execute(_INSERT_HOLD, {"request_id": request_id, "user_id": user_id, "token_id": token_id,
                                "amount": amount, "deadline": now + ttl_s, "now": now})
    return "ok"


def _settle_tx(conn: Connection, record: UsageRecord) -> int:
    hold = conn.execute(_TAKE_HOLD, {"request_id": record.request_id}).first()
    cost = record.cost_micros
    if hold is not None:
        hold_amount, token_id = int(hold[0]), hold[1]
        if cost > hold_amount:
            record.price_basis["capped_from_micros"] = cost
            cost = hold_amount
        conn.execute(_CHARGE_USER, {"cost": cost, "hold": hold_amount, "user_id": record.user_id})
        if token_id is not None:
            conn.execute(_CHARGE_TOKEN, {"cost": cost, "hold": hold_amount, "token_id": token_id})
    else:
        # The reconciler released this hold (we ran past its deadline): charge only
        # what the balance can still cover, never below zero.
        if conn.execute(_CHARGE_UNHELD, {"cost": cost, "user_id": record.user_id}).rowcount != 1:
            record.price_basis["uncollected_micros"] = cost
            cost = 0
        elif cost:
            conn.execute(_SPEND_TOKEN, {"cost": cost, "token_id": record.token_id})
    record.cost_micros = cost
    if cost:
        conn.execute(_LEDGER, {"user_id": record.user_id, "amount": -cost, "kind": "charge",
                               "reason": f"{record.endpoint} {record.model} ({record.group})",
                               "request_id": record.request_id, "now": time.time()})
    conn.execute(_INSERT_USAGE, record.row())
    return cost


def _release_tx(conn: Connection, record: UsageRecord) -> None:
    hold = conn.execute(_TAKE_HOLD, {"request_id": record.request_id}).first()
    if hold is not None:
        _unhold(conn, record.user_id, int(hold[0]), hold[1])
    conn.execute(_INSERT_USAGE, record.row())


def _unhold(conn: Connection, user_id: int, amount: int, token_id: int | None) -> None:
    conn.execute(_UNHOLD_USER, {"hold": amount, "user_id": user_id})
    if token_id is not None:
        conn.execute(_UNHOLD_TOKEN, {"hold": amount, "token_id": token_id})


def _adjust_tx(conn: Connection, user_id: int, amount: int, reason: str, kind: str) -> int:
    row = conn.execute(_ADJUST, {"amount": amount, "user_id": user_id}).first()
    if row is None:
        raise LookupError(f"no user {user_id}")
    conn.execute(_LEDGER, {"user_id": user_id, "amount": amount, "kind": kind, "reason": reason,
                           "request_id": None, "now": time.time()})
    return int(row[0])


def _release_stale_tx(conn: Connection, now: float) -> int:
    rows = conn.execute(_TAKE_STALE, {"now": now}).all()
    for user_id, token_id, amount in rows:
        _unhold(conn, user_id, int(amount), token_id)
    return len(rows)


class Billing:
    """Every money movement, each one transaction on the :class:`TransactionRunner`."""

    def __init__(self, engine: AsyncEngine, runner: TransactionRunner) -> None:
        self._engine = engine  # read-only reports (audit)
        self._runner = runner

    async def adjust(self, user_id: int, amount_micros: int, reason: str, *, kind: str = "topup") -> int:
        """Top up (positive) or adjust (either sign) a balance; returns the new balance."""
        if not reason:
            raise ValueError("a balance change needs a reason")
        return await self._runner.run(_adjust_tx, user_id, amount_micros, reason, kind)

    async def place_hold(
        self, request_id: str, user_id: int, amount_micros: int, ttl_s: float, *, token_id: int | None = None
    ) -> HoldResult:
        """Reserve ``amount_micros`` against the balance and the token's spend cap."""
        return await self._runner.run(_hold_tx, request_id, user_id, amount_micros, ttl_s, token_id)

    async def settle(self, record: UsageRecord) -> int:
        """Charge the call and close its hold; returns the amount actually charged.

        The charge never exceeds the hold: the hold was the caller's worst case, and
        charging more could take a concurrent balance below zero.
        """
        return await self._runner.run(_settle_tx, record)

    async def release(self, record: UsageRecord) -> None:
        """Close a failed call's hold without charging, and record it."""
        record.cost_micros = 0
        await self._runner.run(_release_tx, record)

    async def record_only(self, record: UsageRecord) -> None:
        """A call refused before any hold (bad input, no balance): record it, charge nothing."""
        record.cost_micros = 0
        await self._runner.run(lambda conn: conn.execute(_INSERT_USAGE, record.row()))

    async def release_stale_holds(self, now: float | None = None) -> int:
        """Release holds past their deadline (a crash mid-call). Returns how many."""
        return await self._runner.run(_release_stale_tx, time.time() if now is None else now)

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
