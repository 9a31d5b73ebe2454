"""Balances, holds, the ledger and usage records: every money movement is here.

Invariants (checked by ``audit``):
- ``users.balance_micros`` equals the sum of the user's ledger entries;
- ``users.held_micros`` equals the sum of the user's open holds;
- every call leaves exactly one usage record, written in the same transaction as
  its settle or release; a charge's ledger entry carries the call's request id.

A hold raises ``held`` only where ``balance - held >= amount`` and writes the hold row,
in one transaction committed before the upstream call; settle/release is one
transaction after it. Each movement is written once, as SQLAlchemy Core steps
(storage/movements.py): on SQLite they run as a few statements inline; on PostgreSQL as
one autocommit statement of data-modifying CTEs. Nothing is lost on a
crash: :meth:`Billing.release_stale_holds` releases the holds of calls whose process is
gone (with their usage record, status 499 ``interrupted``) and holds past their deadline.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any, Literal

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.domain.records import UsageRecord
from imagerelay.storage.db import TransactionRunner
from imagerelay.storage.movements import Movement, Step, least, ref
from imagerelay.storage.schema import holds, instances, ledger, tokens, usage_records, users

HoldResult = Literal["ok", "balance", "spend_cap"]

# An adjustment may take a balance no higher than this ($1 trillion): far below the
# 64-bit column's limit, which SQLite would otherwise pass silently into a float.
MAX_BALANCE_MICROS = 10**18


class AdjustmentRepeated(Exception):
    """An adjustment whose once-only key (``Billing.adjust(once=...)``) was applied before."""


class AdjustmentRefused(ValueError):
    """A debit larger than the available balance (``audit`` treats a negative balance
    as corruption), or a credit past :data:`MAX_BALANCE_MICROS`."""

    def __init__(self, amount_micros: int, available_micros: int) -> None:
        super().__init__(f"adjustment of {amount_micros} refused (available {available_micros})")
        self.amount_micros = amount_micros
        self.available_micros = available_micros


def interrupted_record(hold: Any, now: float) -> UsageRecord:
    """The usage record of a call whose process died mid-call: free, status 499."""
    info = orjson.loads(hold["call_info"] or "{}")
    return UsageRecord(
        request_id=hold["request_id"],
        user_id=int(hold["user_id"]),
        token_id=int(hold["token_id"] or 0),
        group=info.get("group", ""),
        model=info.get("model", ""),
        route=info.get("route", ""),
        endpoint=info.get("endpoint", ""),
        billing_mode=info.get("billing_mode", ""),
        status=499,
        error_code="interrupted",
        latency_ms=max(0, int((now - float(hold["created_at"])) * 1000)),
    )


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
# The money movements, each written once (storage/movements.py: SQLite runs the steps in
# order inside one write transaction; PostgreSQL runs them as one statement of
# data-modifying CTEs, a call's movements batched with their concurrent peers in one
# transaction: storage/pg_batches.py). Rows are locked in one order everywhere: the hold
# row, then the user, then the token (a step that refers to another runs after it), so
# two single movements never deadlock on PostgreSQL (a batch can, rarely, and its
# victim runs again: storage/pg_batches.py); under READ COMMITTED a statement that
# waited for a row lock re-checks its guard against the newest version of the row,
# which is what keeps concurrent holds from overspending.
def _p(name: str, type_: Any) -> Any:
    return bindparam(name, type_=type_)


_REQUEST_ID, _USER_ID, _TOKEN_ID = _p("request_id", String), _p("user_id", Integer), _p("token_id", Integer)
_AMOUNT, _NOW = _p("amount", BigInteger), _p("now", Float)
_AVAILABLE_EXPR = users.c.balance_micros - users.c.held_micros
# The rules: a hold fits the balance and the token's spend cap (spent + held + amount <= cap).
_FITS_BALANCE = _AVAILABLE_EXPR >= _AMOUNT
_FITS_CAP = or_(
    tokens.c.spend_cap_micros.is_(None),
    tokens.c.spend_cap_micros - tokens.c.spent_micros - tokens.c.held_micros >= _AMOUNT,
)

HOLD = Movement(
    "hold",
    [
        Step("lu", select(_FITS_BALANCE.label("ok")).where(users.c.id == _USER_ID).with_for_update()),
        Step(
            "lt",
            select(_FITS_CAP.label("ok"))
            .where(tokens.c.id == _TOKEN_ID, ref("lu", "ok", Boolean).is_not(None))
            .with_for_update(),
        ),
        Step(
            "d",
            select(
                ref("lu", "ok", Boolean).label("balance_ok"),
                and_(ref("lu", "ok", Boolean), func.coalesce(ref("lt", "ok", Boolean), _TOKEN_ID.is_(None))).label(
                    "ok"
                ),
            ),
        ),
        Step(
            "u",
            update(users)
            .where(users.c.id == _USER_ID, ref("d", "ok", Boolean).is_(true()))
            .values(held_micros=users.c.held_micros + _AMOUNT),
        ),
        Step(
            "t",
            update(tokens)
            .where(tokens.c.id == _TOKEN_ID, ref("d", "ok", Boolean).is_(true()))
            .values(held_micros=tokens.c.held_micros + _AMOUNT),
        ),
        Step(
            "h",
            insert(holds).from_select(
                [
                    "request_id",
                    "user_id",
                    "token_id",
                    "amount_micros",
                    "deadline",
                    "created_at",
                    "instance_id",
                    "call_info",
                ],
                select(
                    _REQUEST_ID,
                    _USER_ID,
                    _TOKEN_ID,
                    _AMOUNT,
                    _p("deadline", Float),
                    _NOW,
                    _p("instance_id", String),
                    _p("call_info", Text),
                ).where(ref("d", "ok", Boolean).is_(true())),
            ),
        ),
    ],
    result="d",
    batch_order=("user_id", "token_id"),
)

_USAGE_COLUMNS = [c for c in usage_records.columns if c.name != "id"]
_USAGE_PARAMS = {c.name: _p(f"rec_{c.name}", c.type) for c in _USAGE_COLUMNS}
_TAKE_HOLD = Step(
    "h",
    delete(holds)
    .where(holds.c.request_id == _p("rec_request_id", String))
    .returning(holds.c.amount_micros, holds.c.token_id),
)
_HOLD_AMOUNT, _HOLD_TOKEN = ref("h", "amount_micros", BigInteger), ref("h", "token_id", Integer)
_REC_USER, _PRICE = _USAGE_PARAMS["user_id"], _USAGE_PARAMS["cost_micros"]
# A call's movements on PostgreSQL go in batches (storage/pg_batches.py) sorted the way
# they lock rows: the user, then the token.
_CALL_ORDER = ("rec_user_id", "rec_token_id")


def _usage_insert(**computed: Any) -> Step:
    """The call's one usage record, from the record's parameters (``rec_<column>``) and
    what the movement computed."""
    return Step(
        "r",
        insert(usage_records).from_select(
            [c.name for c in _USAGE_COLUMNS],
            select(*(computed.get(c.name, _USAGE_PARAMS[c.name]) for c in _USAGE_COLUMNS)),
        ),
    )


# Settle: with its hold, the price capped at the hold (the caller's worst case: charging
# more could take a concurrent balance below zero); without it (the reconciler released
# the hold because the call outlived its deadline), the price if the available balance
# still covers it, else nothing. _charge_for states the same rule for the record.
_CHARGE = least(_PRICE, func.coalesce(_HOLD_AMOUNT, _PRICE))
_COST = ref("k", "cost", BigInteger)
SETTLE = Movement(
    "settle",
    [
        _TAKE_HOLD,
        Step(
            "u",
            update(users)
            .where(users.c.id == _REC_USER, or_(_HOLD_AMOUNT.is_not(None), _AVAILABLE_EXPR >= _PRICE))
            .values(
                balance_micros=users.c.balance_micros - _CHARGE,
                held_micros=users.c.held_micros - func.coalesce(_HOLD_AMOUNT, 0),
            )
            .returning(_CHARGE.label("cost")),
        ),
        Step(
            "k",
            select(
                ref("u", "cost", BigInteger).is_not(None).label("collected"),
                func.coalesce(ref("u", "cost", BigInteger), 0).label("cost"),
                _HOLD_AMOUNT.label("hold"),
            ),
        ),
        Step(
            "t",
            update(tokens)
            .where(
                tokens.c.id == case((_HOLD_AMOUNT.is_(None), _USAGE_PARAMS["token_id"]), else_=_HOLD_TOKEN),
                or_(_HOLD_AMOUNT.is_not(None), _COST > 0),
            )
            .values(
                spent_micros=tokens.c.spent_micros + _COST,
                held_micros=tokens.c.held_micros - func.coalesce(_HOLD_AMOUNT, 0),
            ),
        ),
        Step(
            "l",
            insert(ledger).from_select(
                ["user_id", "amount_micros", "kind", "reason", "request_id", "created_at"],
                select(
                    _REC_USER,
                    -_COST,
                    literal_column("'charge'", String),
                    _p("reason", Text),
                    _USAGE_PARAMS["request_id"],
                    _USAGE_PARAMS["created_at"],
                ).where(_COST > 0),
            ),
        ),
        _usage_insert(
            cost_micros=_COST,
            price_basis=case(
                (and_(_HOLD_AMOUNT.is_not(None), _PRICE > _HOLD_AMOUNT), _p("capped_basis", Text)),
                (ref("k", "collected", Boolean).is_(false()), _p("uncollected_basis", Text)),
                else_=_USAGE_PARAMS["price_basis"],
            ),
        ),
    ],
    result="k",
    batch_order=_CALL_ORDER,
)

# Release: close the hold (if the reconciler has not) without charging.
_UNHOLD_USER = Step(
    "u",
    update(users)
    .where(users.c.id == ref("h", "user_id", Integer))
    .values(held_micros=users.c.held_micros - _HOLD_AMOUNT)
    .returning(users.c.id),
)
_UNHOLD_TOKEN = Step(
    "t",
    update(tokens)
    .where(tokens.c.id == _HOLD_TOKEN, ref("u", "id", Integer).is_not(None))
    .values(held_micros=tokens.c.held_micros - _HOLD_AMOUNT),
)
RELEASE = Movement(
    "release",
    [
        Step(
            "h",
            delete(holds)
            .where(holds.c.request_id == _p("rec_request_id", String))
            .returning(holds.c.amount_micros, holds.c.token_id, holds.c.user_id),
        ),
        _UNHOLD_USER,
        _UNHOLD_TOKEN,
        _usage_insert(cost_micros=literal_column("0", BigInteger)),
    ],
    batch_order=_CALL_ORDER,
)
RECORD = Movement("record", [_usage_insert(cost_micros=literal_column("0", BigInteger))], batch_order=_CALL_ORDER)

_ADJUSTED = _p("amount", BigInteger)
ADJUST = Movement(
    "adjust",
    [
        Step(
            "u",
            update(users)
            .where(
                users.c.id == _USER_ID,
                or_(_ADJUSTED >= 0, _AVAILABLE_EXPR + _ADJUSTED >= 0),  # a debit never goes past the available balance
                or_(_ADJUSTED <= 0, users.c.balance_micros + _ADJUSTED <= _p("max", BigInteger)),
            )
            .values(balance_micros=users.c.balance_micros + _ADJUSTED)
            .returning(users.c.balance_micros),
        ),
        Step(
            "l",
            insert(ledger).from_select(
                ["user_id", "amount_micros", "kind", "reason", "request_id", "created_at"],
                select(
                    _USER_ID, _ADJUSTED, _p("kind", String), _p("reason", Text), _p("request_id", String), _NOW
                ).where(ref("u", "balance_micros", BigInteger).is_not(None)),
            ),
        ),
    ],
    result="u",
)
AVAILABLE = Movement(
    "available", [Step("a", select(_AVAILABLE_EXPR.label("available")).where(users.c.id == _USER_ID))], result="a"
)

# Past its deadline, a hold is released without a record only while its call may
# still settle and record itself: a job's hold, or a call of a live process. The calls
# of a process that is gone are released with their record first (see
# Billing.release_stale_holds), and never here. Rare (start-up and once a minute):
# the candidates are read first, then each hold is dropped on its own, re-checked.
_STALE = and_(
    holds.c.deadline < _NOW,
    or_(
        holds.c.instance_id.is_(None),
        holds.c.instance_id.in_(select(instances.c.id).where(instances.c.expires_at >= _NOW)),
    ),
)
DROP_STALE_HOLD = Movement(
    "drop_stale_hold",
    [
        Step(
            "h",
            delete(holds)
            .where(holds.c.request_id == _p("rec_request_id", String), _STALE)
            .returning(holds.c.amount_micros, holds.c.token_id, holds.c.user_id),
        ),
        _UNHOLD_USER,
        _UNHOLD_TOKEN,
    ],
    result="h",
)


def _usage_params(record: UsageRecord) -> dict[str, Any]:
    return {f"rec_{name}": value for name, value in record.row().items()}


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
        self.instance_id = instance_id  # this process (storage/instances.py), named by its calls' holds

    async def adjust(
        self, user_id: int, amount_micros: int, reason: str, *, kind: str = "topup", once: str | None = None
    ) -> int:
        """Top up (positive) or adjust (either sign) a balance; returns the new balance.

        ``once``: a key that makes the adjustment happen at most once, whoever asks and
        however often (its ledger row holds it as the unique request id): a repeat raises
        :class:`AdjustmentRepeated` and changes nothing. Raises :class:`AdjustmentRefused`
        for a debit past the available balance or a credit past :data:`MAX_BALANCE_MICROS`,
        ``LookupError`` for an unknown user."""
        if not reason:
            raise ValueError("a balance change needs a reason")
        try:
            row = await self._runner.movement(
                ADJUST,
                {
                    "user_id": user_id,
                    "amount": amount_micros,
                    "kind": kind,
                    "reason": reason,
                    "request_id": once,
                    "now": time.time(),
                    "max": MAX_BALANCE_MICROS,
                },
            )
        except Exception as exc:
            if once is not None and _is_repeat(exc):
                raise AdjustmentRepeated(once) from None
            raise
        if row is None:
            available = await self._runner.movement(AVAILABLE, {"user_id": user_id})
            if available is None:
                raise LookupError(f"no user {user_id}")
            raise AdjustmentRefused(amount_micros, int(available["available"]))
        return int(row["balance_micros"])

    async def place_hold(
        self,
        request_id: str,
        user_id: int,
        amount_micros: int,
        ttl_s: float,
        *,
        token_id: int | None = None,
        call: UsageRecord | None = None,
    ) -> HoldResult:
        """Reserve ``amount_micros`` against the balance and the token's spend cap.

        Durable when this returns "ok": the hold is committed before the upstream call.
        ``call``: the usage record of a call this process runs; the hold then names this
        process, and if the process dies a peer releases it with an ``interrupted``
        record made from it. Without it the hold names no process (a job's hold: the
        job outlives the process and its re-run settles the hold).
        """
        now = time.time()
        row = await self._runner.movement(
            HOLD,
            {
                "request_id": request_id,
                "user_id": user_id,
                "token_id": token_id,
                "amount": amount_micros,
                "deadline": now + ttl_s,
                "now": now,
                "instance_id": self.instance_id if call is not None else None,
                "call_info": call.call_info() if call is not None else None,
            },
        )
        assert row is not None  # the decision step always has its one row
        if row["ok"]:
            return "ok"
        return "spend_cap" if row["balance_ok"] else "balance"

    async def settle(self, record: UsageRecord) -> int:
        """Charge the call and close its hold; returns the amount actually charged
        (see :func:`_charge_for`). A repeat returns the first settle's charge."""
        basis = record.price_basis
        try:
            row = await self._runner.movement(
                SETTLE,
                {
                    **_usage_params(record),
                    "reason": _ledger_reason(record),
                    "capped_basis": orjson.dumps({**basis, "capped_from_micros": record.cost_micros}).decode(),
                    "uncollected_basis": orjson.dumps({**basis, "uncollected_micros": record.cost_micros}).decode(),
                },
            )
        except Exception as exc:
            if not _is_repeat(exc):
                raise
            record.cost_micros = await self._recorded_cost(record.request_id)
            return record.cost_micros
        assert row is not None
        hold = None if row["hold"] is None else int(row["hold"])
        record.cost_micros = _charge_for(record, hold, bool(row["collected"]))
        assert record.cost_micros == int(row["cost"]), "the movement and _charge_for disagree"
        return record.cost_micros

    async def release(self, record: UsageRecord) -> None:
        """Close a failed call's hold without charging, and record it."""
        await self._record_free(record, RELEASE)

    async def record_only(self, record: UsageRecord) -> None:
        """A call refused before any hold (bad input, no balance): record it, charge nothing."""
        await self._record_free(record, RECORD)

    async def _record_free(self, record: UsageRecord, movement: Movement) -> None:
        record.cost_micros = 0
        try:
            await self._runner.movement(movement, _usage_params(record))
        except Exception as exc:
            if not _is_repeat(exc):
                raise

    async def hold_open(self, request_id: str) -> bool:
        """Whether the call ``request_id`` still holds money (placed, not yet settled,
        released or dropped by the reconciler)."""
        async with self._engine.connect() as conn:
            found = await conn.execute(select(holds.c.request_id).where(holds.c.request_id == request_id))
            return found.first() is not None

    async def recorded_status(self, request_id: str) -> int | None:
        """The status of the call's usage record; None while it has none."""
        async with self._engine.connect() as conn:
            status = (
                await conn.execute(select(usage_records.c.status).where(usage_records.c.request_id == request_id))
            ).scalar_one_or_none()
        return None if status is None else int(status)

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
        async with self._engine.connect() as conn:
            stale = (await conn.execute(select(holds.c.request_id).where(_STALE), {"now": now})).scalars().all()
        released = 0
        for request_id in stale:
            released += (
                await self._runner.movement(DROP_STALE_HOLD, {"rec_request_id": request_id, "now": now}) is not None
            )
        return released

    async def _recorded_cost(self, request_id: str) -> int:
        async with self._engine.connect() as conn:
            cost = (
                await conn.execute(select(usage_records.c.cost_micros).where(usage_records.c.request_id == request_id))
            ).scalar_one_or_none()
        return int(cost or 0)

    async def audit(self) -> list[str]:
        """Every invariant violation, as sentences; empty when the books balance."""
        problems: list[str] = []
        now = time.time()
        async with self._engine.connect() as conn:
            ledger_sums = dict(
                (
                    await conn.execute(
                        select(ledger.c.user_id, func.coalesce(func.sum(ledger.c.amount_micros), 0)).group_by(
                            ledger.c.user_id
                        )
                    )
                ).all()
            )
            hold_sums = dict(
                (
                    await conn.execute(
                        select(holds.c.user_id, func.coalesce(func.sum(holds.c.amount_micros), 0)).group_by(
                            holds.c.user_id
                        )
                    )
                ).all()
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
                (
                    await conn.execute(
                        select(holds.c.token_id, func.coalesce(func.sum(holds.c.amount_micros), 0))
                        .where(holds.c.token_id.is_not(None))
                        .group_by(holds.c.token_id)
                    )
                ).all()
            )
            token_costs = dict(
                (
                    await conn.execute(
                        select(
                            usage_records.c.token_id, func.coalesce(func.sum(usage_records.c.cost_micros), 0)
                        ).group_by(usage_records.c.token_id)
                    )
                ).all()
            )
            for row in (
                await conn.execute(select(tokens.c.id, tokens.c.name, tokens.c.held_micros, tokens.c.spent_micros))
            ).mappings():
                if int(row["held_micros"]) != int(token_holds.get(row["id"], 0)):
                    problems.append(f"token {row['id']} ({row['name']}): held {row['held_micros']} != open holds")
                if int(row["spent_micros"]) != int(token_costs.get(row["id"], 0)):
                    problems.append(
                        f"token {row['id']} ({row['name']}): spent {row['spent_micros']} != its usage records"
                    )
            stale = (
                await conn.execute(select(func.count()).select_from(holds).where(holds.c.deadline < now))
            ).scalar_one()
            if stale:
                problems.append(f"{stale} open hold(s) past their deadline")
            live = select(instances.c.id).where(instances.c.expires_at >= now)
            orphaned = (
                await conn.execute(
                    select(func.count())
                    .select_from(holds)
                    .where(holds.c.instance_id.is_not(None), holds.c.instance_id.not_in(live))
                )
            ).scalar_one()
            if orphaned:
                problems.append(
                    f"{orphaned} open hold(s) of gateway processes that are gone (a running gateway releases them)"
                )
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
