"""Balances, holds, the ledger and usage records: every money movement is here.

Invariants (checked by ``audit``):
- ``users.balance_micros`` equals the sum of the user's ledger entries;
- ``users.held_micros`` equals the sum of the user's open holds;
- every call leaves exactly one usage record, written in the same transaction as
  its settle or release; a charge's ledger entry carries the call's request id.

A hold raises ``held`` only where ``balance - held >= amount`` and writes the hold row,
in one transaction committed before the upstream call; settle/release is one
transaction after it. On SQLite a transaction is a few statements inline; on PostgreSQL
it is one autocommit statement (see the PostgreSQL section below). Nothing is lost on a
crash: :meth:`Billing.release_stale_holds` releases the holds of calls whose process is
gone (with their usage record, status 499 ``interrupted``) and holds past their deadline.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.types import Usage
from imagerelay.storage.db import Connection, TransactionRunner
from imagerelay.storage.schema import holds, instances, ledger, tokens, usage_records, users

HoldResult = Literal["ok", "balance", "spend_cap"]

# An adjustment may take a balance no higher than this ($1 trillion): far below the
# 64-bit column's limit, which SQLite would otherwise pass silently into a float.
MAX_BALANCE_MICROS = 10**18


class AdjustmentRefused(ValueError):
    """A debit larger than the available balance (``audit`` treats a negative balance
    as corruption), or a credit past :data:`MAX_BALANCE_MICROS`."""

    def __init__(self, amount_micros: int, available_micros: int) -> None:
        super().__init__(f"adjustment of {amount_micros} refused (available {available_micros})")
        self.amount_micros = amount_micros
        self.available_micros = available_micros


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

    def call_info(self) -> str:
        """What an interrupted call's record will say (kept with its hold)."""
        return orjson.dumps({"group": self.group, "model": self.model, "route": self.route,
                             "endpoint": self.endpoint, "billing_mode": self.billing_mode}).decode()


def interrupted_record(hold: Any, now: float) -> UsageRecord:
    """The usage record of a call whose process died mid-call: free, status 499."""
    info = orjson.loads(hold["call_info"] or "{}")
    return UsageRecord(
        request_id=hold["request_id"], user_id=int(hold["user_id"]), token_id=int(hold["token_id"] or 0),
        group=info.get("group", ""), model=info.get("model", ""), route=info.get("route", ""),
        endpoint=info.get("endpoint", ""), billing_mode=info.get("billing_mode", ""),
        status=499, error_code="interrupted", latency_ms=max(0, int((now - float(hold["created_at"])) * 1000)),
    )


class AlreadyRecorded(Exception):
    """The call already has its usage record: a repeated settle/release/record rolled
    back whole, and the first outcome stands."""


def _charge_for(record: UsageRecord, hold: int | None, collected: bool) -> int:
    """What a settled call is charged (one rule for both databases), noting in its
    price basis why that differs from its price.

    With its hold: the price, capped at the hold (the hold was the caller's worst
    case; charging more could take a concurrent balance below zero). Without it (the
    reconciler released the hold because the call outlived its deadline): the price
    if the available balance still covers it, else nothing.
    """
    price = record.cost_micros
    if hold is not None:
        if price > hold:
            record.price_basis["capped_from_micros"] = price
            return hold
        return price
    if not collected:
        record.price_basis["uncollected_micros"] = price
        return 0
    return price


def _ledger_reason(record: UsageRecord) -> str:
    return f"{record.endpoint} {record.model} ({record.group})"


# ---------------------------------------------------------------------------------------
# SQLite: each money movement is a short write transaction of several statements, run
# inline by TransactionRunner.run (BEGIN IMMEDIATE: the whole database is the lock).
# Pre-built statements: compiled once, reused by every call.
_HOLD_USER = text(
    "UPDATE users SET held_micros = held_micros + :amount "
    "WHERE id = :user_id AND balance_micros - held_micros >= :amount"
)
_HOLD_TOKEN = text(
    "UPDATE tokens SET held_micros = held_micros + :amount WHERE id = :token_id "
    "AND (spend_cap_micros IS NULL OR spend_cap_micros - spent_micros - held_micros >= :amount)"
)
_INSERT_HOLD = text(
    "INSERT INTO holds (request_id, user_id, token_id, amount_micros, deadline, created_at, instance_id, call_info) "
    "VALUES (:request_id, :user_id, :token_id, :amount, :deadline, :now, :instance_id, :call_info)"
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
_ADJUST = text(
    "UPDATE users SET balance_micros = balance_micros + :amount WHERE id = :user_id "
    "AND (:amount >= 0 OR balance_micros - held_micros + :amount >= 0) "
    "AND (:amount <= 0 OR balance_micros + :amount <= :max) RETURNING balance_micros"
)
_AVAILABLE = text("SELECT balance_micros - held_micros FROM users WHERE id = :user_id")
# Past its deadline, a hold is released without a record only while its call may
# still settle and record itself: a job's hold, or a call of a live process. The calls
# of a process that is gone are released with their record first (see
# Billing.release_stale_holds), and never here.
_STALE_WHERE = (
    "deadline < :now AND (instance_id IS NULL OR instance_id IN (SELECT id FROM instances WHERE expires_at >= :now))"
)
_TAKE_STALE = text(f"DELETE FROM holds WHERE {_STALE_WHERE} RETURNING user_id, token_id, amount_micros")
_USAGE_COLUMNS = [c for c in usage_records.columns if c.name != "id"]
_INSERT_USAGE = text(
    f"INSERT INTO usage_records ({', '.join(c.name for c in _USAGE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c.name for c in _USAGE_COLUMNS)})"
)


def _hold_tx(conn: Connection, request_id: str, user_id: int, amount: int, ttl_s: float,
             token_id: int | None, instance_id: str | None, call_info: str | None) -> HoldResult:
    if conn.execute(_HOLD_USER, {"amount": amount, "user_id": user_id}).rowcount != 1:
        conn.rollback()
        return "balance"
    if token_id is not None and conn.execute(_HOLD_TOKEN, {"amount": amount, "token_id": token_id}).rowcount != 1:
        conn.rollback()
        return "spend_cap"
    now = time.time()
    conn.execute(_INSERT_HOLD, {"request_id": request_id, "user_id": user_id, "token_id": token_id,
                                "amount": amount, "deadline": now + ttl_s, "now": now,
                                "instance_id": instance_id, "call_info": call_info})
    return "ok"


def _settle_tx(conn: Connection, record: UsageRecord) -> int:
    hold = conn.execute(_TAKE_HOLD, {"request_id": record.request_id}).first()
    if hold is not None:
        hold_amount, token_id = int(hold[0]), hold[1]
        cost = _charge_for(record, hold_amount, True)
        conn.execute(_CHARGE_USER, {"cost": cost, "hold": hold_amount, "user_id": record.user_id})
        if token_id is not None:
            conn.execute(_CHARGE_TOKEN, {"cost": cost, "hold": hold_amount, "token_id": token_id})
    else:
        collected = conn.execute(_CHARGE_UNHELD, {"cost": record.cost_micros, "user_id": record.user_id}).rowcount == 1
        cost = _charge_for(record, None, collected)
        if cost:
            conn.execute(_SPEND_TOKEN, {"cost": cost, "token_id": record.token_id})
    record.cost_micros = cost
    if cost:
        conn.execute(_LEDGER, {"user_id": record.user_id, "amount": -cost, "kind": "charge",
                               "reason": _ledger_reason(record), "request_id": record.request_id, "now": time.time()})
    conn.execute(_INSERT_USAGE, record.row())
    return cost


def _release_tx(conn: Connection, record: UsageRecord) -> None:
    hold = conn.execute(_TAKE_HOLD, {"request_id": record.request_id}).first()
    if hold is not None:
        _unhold(conn, record.user_id, int(hold[0]), hold[1])
    conn.execute(_INSERT_USAGE, record.row())


def _record_tx(conn: Connection, record: UsageRecord) -> None:
    conn.execute(_INSERT_USAGE, record.row())


def _unhold(conn: Connection, user_id: int, amount: int, token_id: int | None) -> None:
    conn.execute(_UNHOLD_USER, {"hold": amount, "user_id": user_id})
    if token_id is not None:
        conn.execute(_UNHOLD_TOKEN, {"hold": amount, "token_id": token_id})


def _adjust_tx(conn: Connection, user_id: int, amount: int, reason: str, kind: str) -> int:
    row = conn.execute(_ADJUST, {"amount": amount, "user_id": user_id, "max": MAX_BALANCE_MICROS}).first()
    if row is None:
        available = conn.execute(_AVAILABLE, {"user_id": user_id}).first()
        if available is None:
            raise LookupError(f"no user {user_id}")
        raise AdjustmentRefused(amount, int(available[0]))
    conn.execute(_LEDGER, {"user_id": user_id, "amount": amount, "kind": kind, "reason": reason,
                           "request_id": None, "now": time.time()})
    return int(row[0])


def _release_stale_tx(conn: Connection, now: float) -> int:
    rows = conn.execute(_TAKE_STALE, {"now": now}).all()
    for user_id, token_id, amount in rows:
        _unhold(conn, user_id, int(amount), token_id)
    return len(rows)


# ---------------------------------------------------------------------------------------
# PostgreSQL: each money movement is ONE statement in autocommit (data-modifying CTEs),
# the same steps as the SQLite transaction above. One statement is one round trip, and a
# hot balance row is locked only while that statement runs and commits. Under READ
# COMMITTED a statement that waited for a row lock re-checks its guard against the
# newest version of the row, which is what keeps concurrent holds from overspending.
# Rows are locked in one order everywhere — the hold row, then the user, then the
# token — and a CTE that must lock after another refers to it, which makes PostgreSQL
# run it first; so two money statements never deadlock.
_PG_TYPES = {"Integer": "int", "BigInteger": "bigint", "Float": "float8", "String": "text", "Text": "text"}


def _pg_cast(column: Any) -> str:
    # Parameters in a SELECT list have no type of their own: each needs its cast.
    return _PG_TYPES[type(column.type).__name__]


# Usage record columns are parameters $1..$21 in _USAGE_COLUMNS order; the statements
# below rely on request_id = $1, user_id = $2, token_id = $3.
_PG_USAGE_ARG = {c.name: f"${i}::{_pg_cast(c)}" for i, c in enumerate(_USAGE_COLUMNS, start=1)}
assert [_PG_USAGE_ARG[n].split("::")[0] for n in ("request_id", "user_id", "token_id")] == ["$1", "$2", "$3"]
_PG_USAGE_INTO = f"INSERT INTO usage_records ({', '.join(c.name for c in _USAGE_COLUMNS)})"
_N = len(_USAGE_COLUMNS)

_PG_HOLD = """
WITH lu AS (
    SELECT balance_micros - held_micros >= $4::bigint AS ok FROM users WHERE id = $2::int FOR UPDATE
), lt AS (
    SELECT spend_cap_micros IS NULL OR spend_cap_micros - spent_micros - held_micros >= $4::bigint AS ok
    FROM tokens WHERE id = $3::int AND EXISTS (SELECT FROM lu) FOR UPDATE
), d AS (
    SELECT lu.ok AS balance_ok, lu.ok AND COALESCE((SELECT ok FROM lt), $3::int IS NULL) AS ok FROM lu
), u AS (
    UPDATE users SET held_micros = held_micros + $4::bigint FROM d WHERE users.id = $2::int AND d.ok
), t AS (
    UPDATE tokens SET held_micros = held_micros + $4::bigint FROM d WHERE tokens.id = $3::int AND d.ok
), h AS (
    INSERT INTO holds (request_id, user_id, token_id, amount_micros, deadline, created_at, instance_id, call_info)
    SELECT $1::text, $2::int, $3::int, $4::bigint, $5::float8, $6::float8, $7::text, $8::text FROM d WHERE d.ok
)
SELECT d.ok, d.balance_ok FROM d
"""

# $cost: the price asked for; $capped / $uncollected: the record's price basis for
# those outcomes (see _charge_for, which the caller applies to the record afterwards).
_COST, _BASIS, _AT = _PG_USAGE_ARG["cost_micros"], _PG_USAGE_ARG["price_basis"], _PG_USAGE_ARG["created_at"]
_PG_SETTLE_SELECT = ", ".join(
    "k.cost" if c.name == "cost_micros"
    else (f"CASE WHEN k.hold IS NOT NULL AND {_COST} > k.hold THEN ${_N + 1}::text "
          f"WHEN NOT k.collected THEN ${_N + 2}::text ELSE {_BASIS} END") if c.name == "price_basis"
    else _PG_USAGE_ARG[c.name]
    for c in _USAGE_COLUMNS
)
_PG_SETTLE = f"""
WITH h AS (
    DELETE FROM holds WHERE request_id = $1::text RETURNING amount_micros, token_id
), c AS (
    SELECT h.amount_micros AS hold, h.token_id AS hold_token FROM (VALUES (1)) AS one (x) LEFT JOIN h ON true
), u AS (
    UPDATE users SET balance_micros = balance_micros - LEAST({_COST}, COALESCE(c.hold, {_COST})),
                     held_micros = held_micros - COALESCE(c.hold, 0)
    FROM c
    WHERE users.id = $2::int AND (c.hold IS NOT NULL OR users.balance_micros - users.held_micros >= {_COST})
    RETURNING LEAST({_COST}, COALESCE(c.hold, {_COST})) AS cost
), k AS (
    SELECT c.hold, c.hold_token, u.cost IS NOT NULL AS collected, COALESCE(u.cost, 0) AS cost
    FROM c LEFT JOIN u ON true
), t AS (
    UPDATE tokens SET spent_micros = spent_micros + k.cost, held_micros = held_micros - COALESCE(k.hold, 0)
    FROM k
    WHERE tokens.id = CASE WHEN k.hold IS NULL THEN $3::int ELSE k.hold_token END
      AND (k.hold IS NOT NULL OR k.cost > 0)
), l AS (
    INSERT INTO ledger (user_id, amount_micros, kind, reason, request_id, created_at)
    SELECT $2::int, -k.cost, 'charge', ${_N + 3}::text, $1::text, {_AT} FROM k WHERE k.cost > 0
), r AS (
    {_PG_USAGE_INTO} SELECT {_PG_SETTLE_SELECT} FROM k
)
SELECT k.hold, k.collected FROM k
"""

_PG_RELEASE = f"""
WITH h AS (
    DELETE FROM holds WHERE request_id = $1::text RETURNING amount_micros, token_id
), u AS (
    UPDATE users SET held_micros = held_micros - h.amount_micros FROM h WHERE users.id = $2::int
    RETURNING h.token_id, h.amount_micros
), t AS (
    UPDATE tokens SET held_micros = held_micros - u.amount_micros FROM u WHERE tokens.id = u.token_id
), r AS (
    {_PG_USAGE_INTO} VALUES ({', '.join(_PG_USAGE_ARG[c.name] for c in _USAGE_COLUMNS)})
)
SELECT count(*) FROM h
"""

_PG_RECORD = f"{_PG_USAGE_INTO} VALUES ({', '.join(_PG_USAGE_ARG[c.name] for c in _USAGE_COLUMNS)}) RETURNING 1"

_PG_ADJUST = """
WITH u AS (
    UPDATE users SET balance_micros = balance_micros + $2::bigint WHERE id = $1::int
      AND ($2::bigint >= 0 OR balance_micros - held_micros + $2::bigint >= 0)
      AND ($2::bigint <= 0 OR balance_micros + $2::bigint <= $6::bigint)
    RETURNING balance_micros
), l AS (
    INSERT INTO ledger (user_id, amount_micros, kind, reason, request_id, created_at)
    SELECT $1::int, $2::bigint, $3::text, $4::text, NULL, $5::float8 FROM u
)
SELECT balance_micros FROM u
"""

# Rare (start-up and once a minute), so several statements in one transaction; users
# before tokens, each in id order, like every other money statement.
_PG_TAKE_STALE = (
    f"DELETE FROM holds WHERE {_STALE_WHERE.replace(':now', '$1::float8')} RETURNING user_id, token_id, amount_micros"
)
_PG_UNHOLD_USER = "UPDATE users SET held_micros = held_micros - $2::bigint WHERE id = $1::int"
_PG_UNHOLD_TOKEN = "UPDATE tokens SET held_micros = held_micros - $2::bigint WHERE id = $1::int"


def _pg_usage_args(record: UsageRecord) -> list[Any]:
    row = record.row()
    return [row[c.name] for c in _USAGE_COLUMNS]


def _is_repeat(exc: BaseException) -> bool:
    """A unique violation on a call's request id in the ledger or usage records: the
    call was already settled, released or recorded."""
    text_ = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return "usage_records.request_id" in text_ or "ledger.request_id" in text_
    constraint = getattr(exc, "constraint_name", None) or ""
    return getattr(exc, "sqlstate", None) == "23505" and (
        "usage_records_request_id" in constraint or "ledger_request_id" in constraint
    )


class Billing:
    """Every money movement, each one transaction on the :class:`TransactionRunner`.

    Settle, release and record are idempotent per request id: the usage record (and
    the ledger charge) are unique per request id, so a repeat rolls back whole and
    returns the first outcome; it never charges twice.
    """

    def __init__(self, engine: AsyncEngine, runner: TransactionRunner, *, instance_id: str | None = None) -> None:
        self._engine = engine  # read-only reports (audit)
        self._runner = runner
        self._sqlite = runner.is_sqlite
        self.instance_id = instance_id  # this process (storage/instances.py), named by its calls' holds

    async def adjust(self, user_id: int, amount_micros: int, reason: str, *, kind: str = "topup") -> int:
        """Top up (positive) or adjust (either sign) a balance; returns the new balance.

        Raises :class:`AdjustmentRefused` for a debit past the available balance or a
        credit past :data:`MAX_BALANCE_MICROS`, ``LookupError`` for an unknown user."""
        if not reason:
            raise ValueError("a balance change needs a reason")
        if self._sqlite:
            return await self._runner.run(_adjust_tx, user_id, amount_micros, reason, kind)
        row = await self._runner.fetchrow(_PG_ADJUST, user_id, amount_micros, kind, reason, time.time(),
                                          MAX_BALANCE_MICROS)
        if row is None:
            available = await self._runner.fetchrow(
                "SELECT balance_micros - held_micros FROM users WHERE id = $1::int", user_id)
            if available is None:
                raise LookupError(f"no user {user_id}")
            raise AdjustmentRefused(amount_micros, int(available[0]))
        return int(row[0])

    async def place_hold(
        self, request_id: str, user_id: int, amount_micros: int, ttl_s: float, *, token_id: int | None = None,
        call: UsageRecord | None = None,
    ) -> HoldResult:
        """Reserve ``amount_micros`` against the balance and the token's spend cap.

        Durable when this returns "ok": the hold is committed before the upstream call.
        ``call``: the usage record of a call this process runs; the hold then names this
        process, and if the process dies a peer releases it with an ``interrupted``
        record made from it. Without it the hold names no process (a job's hold: the
        job outlives the process and its re-run settles the hold).
        """
        instance_id = self.instance_id if call is not None else None
        call_info = call.call_info() if call is not None else None
        if self._sqlite:
            return await self._runner.run(
                _hold_tx, request_id, user_id, amount_micros, ttl_s, token_id, instance_id, call_info)
        now = time.time()
        row = await self._runner.fetchrow(
            _PG_HOLD, request_id, user_id, token_id, amount_micros, now + ttl_s, now, instance_id, call_info)
        if row is not None and row[0]:
            return "ok"
        return "spend_cap" if row is not None and row[1] else "balance"

    async def settle(self, record: UsageRecord) -> int:
        """Charge the call and close its hold; returns the amount actually charged
        (see :func:`_charge_for`). A repeat returns the first settle's charge."""
        try:
            if self._sqlite:
                return await self._runner.run(_settle_tx, record)
            basis = record.price_basis
            capped = orjson.dumps({**basis, "capped_from_micros": record.cost_micros}).decode()
            uncollected = orjson.dumps({**basis, "uncollected_micros": record.cost_micros}).decode()
            row = await self._runner.fetchrow(
                _PG_SETTLE, *_pg_usage_args(record), capped, uncollected, _ledger_reason(record)
            )
        except Exception as exc:
            if not _is_repeat(exc):
                raise
            record.cost_micros = await self._recorded_cost(record.request_id)
            return record.cost_micros
        hold = None if row[0] is None else int(row[0])
        record.cost_micros = _charge_for(record, hold, bool(row[1]))
        return record.cost_micros

    async def release(self, record: UsageRecord) -> None:
        """Close a failed call's hold without charging, and record it."""
        await self._record_free(record, _release_tx, _PG_RELEASE)

    async def record_only(self, record: UsageRecord) -> None:
        """A call refused before any hold (bad input, no balance): record it, charge nothing."""
        await self._record_free(record, _record_tx, _PG_RECORD)

    async def _record_free(self, record: UsageRecord, sqlite_tx: Callable[[Connection, UsageRecord], None],
                           pg_statement: str) -> None:
        record.cost_micros = 0
        try:
            if self._sqlite:
                await self._runner.run(sqlite_tx, record)
            else:
                await self._runner.fetchrow(pg_statement, *_pg_usage_args(record))
        except Exception as exc:
            if not _is_repeat(exc):
                raise

    async def hold_owners(self) -> set[str]:
        """The processes named by open holds."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(holds.c.instance_id).where(holds.c.instance_id.is_not(None)).distinct())
            return {r[0] for r in rows}

    async def release_stale_holds(
        self, now: float | None = None, *, gone: Iterable[str] = (), past_deadline: bool = True
    ) -> int:
        """Release what no call will ever settle; returns how many holds.

        - The holds of calls run by processes that are ``gone`` (see
          storage/instances.py), each through :meth:`release` with a usage record of
          status 499 ``interrupted``: one record per call, as for any failed call (if
          the call did finish after all, the first of its settle and this release
          stands, and the other is a no-op).
        - Holds past their deadline whose call may still settle and record itself
          (a job's, or a live process's call that outlived its deadline): released
          without a record, which the call writes when it ends (unless
          ``past_deadline`` is False).
        """
        now = time.time() if now is None else now
        gone = set(gone)
        released = 0
        if gone:
            async with self._engine.connect() as conn:
                orphans = (await conn.execute(select(holds).where(holds.c.instance_id.in_(gone)))).mappings().all()
            for hold in orphans:
                await self.release(interrupted_record(hold, now))
            released = len(orphans)
        return released + (await self._release_past_deadline(now) if past_deadline else 0)

    async def _release_past_deadline(self, now: float) -> int:
        if self._sqlite:
            return await self._runner.run(_release_stale_tx, now)
        async with self._runner.pg_transaction() as conn:
            rows = await conn.fetch(_PG_TAKE_STALE, now)
            users_: dict[int, int] = {}
            tokens_: dict[int, int] = {}
            for user_id, token_id, amount in rows:
                users_[user_id] = users_.get(user_id, 0) + int(amount)
                if token_id is not None:
                    tokens_[token_id] = tokens_.get(token_id, 0) + int(amount)
            for user_id in sorted(users_):
                await conn.execute(_PG_UNHOLD_USER, user_id, users_[user_id])
            for token_id in sorted(tokens_):
                await conn.execute(_PG_UNHOLD_TOKEN, token_id, tokens_[token_id])
            return len(rows)

    async def _recorded_cost(self, request_id: str) -> int:
        async with self._engine.connect() as conn:
            cost = (await conn.execute(
                select(usage_records.c.cost_micros).where(usage_records.c.request_id == request_id)
            )).scalar_one_or_none()
        return int(cost or 0)

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
            live = select(instances.c.id).where(instances.c.expires_at >= now)
            orphaned = (await conn.execute(select(func.count()).select_from(holds).where(
                holds.c.instance_id.is_not(None), holds.c.instance_id.not_in(live)))).scalar_one()
            if orphaned:
                problems.append(f"{orphaned} open hold(s) of gateway processes that are gone (a running gateway "
                                "releases them)")
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
    request_id: str | None = None  # one call: its record, and for a job every attempt's ("<id>.2", ...)
    token_id: int | None = None
    failed: bool | None = None  # True: status >= 400 only; False: successes only
    route: str | None = None
    channel: str | None = None


def usage_conditions(q: UsageQuery) -> list[Any]:
    """The WHERE terms of ``q``'s filters (not its paging), for pages and totals alike."""
    c = usage_records.c
    terms: list[Any] = []
    if q.user_id is not None:
        terms.append(c.user_id == q.user_id)
    if q.since is not None:
        terms.append(c.created_at >= q.since)
    if q.until is not None:
        terms.append(c.created_at < q.until)
    if q.model is not None:
        terms.append(c.model == q.model)
    if q.status is not None:
        terms.append(c.status == q.status)
    if q.token_id is not None:
        terms.append(c.token_id == q.token_id)
    if q.failed is not None:
        terms.append(c.status >= 400 if q.failed else c.status < 400)
    if q.route is not None:
        terms.append(c.route == q.route)
    if q.channel is not None:
        terms.append(c.channel == q.channel)
    if q.request_id is not None:
        terms.append(or_(c.request_id == q.request_id, c.request_id.startswith(q.request_id + ".", autoescape=True)))
    return terms


async def usage_page(engine: AsyncEngine, q: UsageQuery) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; returns (records, has_more)."""
    stmt = select(usage_records).where(*usage_conditions(q)).order_by(usage_records.c.id.desc()).limit(q.limit + 1)
    if q.before_id is not None:
        stmt = stmt.where(usage_records.c.id < q.before_id)
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    for r in rows:
        r["price_basis"] = orjson.loads(r["price_basis"] or "{}")
    return rows[: q.limit], len(rows) > q.limit
