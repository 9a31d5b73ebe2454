"""Reading usage records and the ledger: pages, totals, per-day sums and the dashboard's
buckets, all under one set of filters (:func:`usage_conditions`), so ``/v1/account/usage``,
``/admin/usage``, the user's usage page and the admin console's reports agree.

:class:`UsageReports` is the one object the HTTP handlers and console pages ask; it
returns dicts of rows and the value types of domain/records.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Integer, and_, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from imagerelay.domain.records import DAY_S, Bucket, DaySum, UsageQuery, UsageTotals
from imagerelay.storage.schema import ledger, tokens, usage_records, users


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


def _listing() -> Any:
    """Records with the names a person reads: the user's and the token's."""
    return select(usage_records, users.c.name.label("user_name"), tokens.c.name.label("token_name")).select_from(
        usage_records.outerjoin(users, users.c.id == usage_records.c.user_id).outerjoin(
            tokens, tokens.c.id == usage_records.c.token_id
        )
    )


def _whole(value: object) -> int | None:
    return None if value is None else int(round(Decimal(str(value))))


def _errors() -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((usage_records.c.status >= 400, 1), else_=0)), 0)


class UsageReports:
    """Read-only queries over usage records and the ledger."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def page(self, q: UsageQuery) -> tuple[list[dict[str, Any]], bool]:
        """Records newest first (``q.limit`` of them, before ``q.before_id``), their
        ``price_basis`` decoded; returns (records, has_more)."""
        stmt = select(usage_records).where(*usage_conditions(q)).order_by(usage_records.c.id.desc()).limit(q.limit + 1)
        if q.before_id is not None:
            stmt = stmt.where(usage_records.c.id < q.before_id)
        async with self._engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
        for r in rows:
            r["price_basis"] = orjson.loads(r["price_basis"] or "{}")
        return rows[: q.limit], len(rows) > q.limit

    async def named_rows(
        self, q: UsageQuery, *, limit: int = 50, before_id: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of records with ``user_name`` and ``token_name``, newest first, and
        whether older ones remain (the admin console's listing and CSV)."""
        stmt = _listing().where(and_(True, *usage_conditions(q)))
        if before_id is not None:
            stmt = stmt.where(usage_records.c.id < before_id)
        stmt = stmt.order_by(usage_records.c.id.desc()).limit(limit + 1)
        async with self._engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
        return rows[:limit], len(rows) > limit

    async def totals(self, q: UsageQuery) -> UsageTotals:
        u = usage_records.c
        stmt = select(
            func.count(),
            _errors(),
            func.coalesce(func.sum(u.cost_micros), 0),
            func.avg(u.latency_ms),
            func.avg(u.upstream_latency_ms),
        ).where(and_(True, *usage_conditions(q)))
        async with self._engine.connect() as conn:
            calls, errors, cost, latency, upstream = (await conn.execute(stmt)).one()
        return UsageTotals(int(calls), int(errors), int(cost), _whole(latency), _whole(upstream))

    async def by_day(self, q: UsageQuery) -> list[DaySum]:
        """One sum per UTC day that has records, oldest first (the caller bounds the range)."""
        ts = usage_records.c.created_at / DAY_S
        # floor() exists on PostgreSQL; SQLite's CAST truncates, which is floor for times after 1970.
        day = func.floor(ts) if self._engine.dialect.name == "postgresql" else cast(ts, Integer)
        stmt = (
            select(day.label("day"), func.count(), _errors(), func.coalesce(func.sum(usage_records.c.cost_micros), 0))
            .where(*usage_conditions(q))
            .group_by(day)
            .order_by(day)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [DaySum(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def _bucket_expr(self, size_s: int) -> ColumnElement[Any]:
        # Bucket number = floor(created_at / size). SQLite's CAST truncates (created_at >= 0, so
        # that is floor); PostgreSQL's CAST rounds, so it gets floor() first.
        scaled = usage_records.c.created_at / size_s
        if self._engine.dialect.name == "sqlite":
            return cast(scaled, Integer)
        return cast(func.floor(scaled), Integer)

    async def buckets(self, q: UsageQuery, *, size_s: int, by: str) -> list[Bucket]:
        """Calls, errors, spend and upstream latency per ``size_s`` bucket and per ``by``
        (``route`` or ``channel``; records that reached no channel count as ``(none)``)."""
        if by not in ("route", "channel"):
            raise ValueError(by)
        u = usage_records.c
        bucket = self._bucket_expr(size_s).label("bucket")
        key = (u.route if by == "route" else func.coalesce(u.channel, "(none)")).label("key")
        stmt = (
            select(
                bucket,
                key,
                func.count(),
                _errors(),
                func.coalesce(func.sum(u.cost_micros), 0),
                func.coalesce(func.sum(u.upstream_latency_ms), 0),
                func.count(u.upstream_latency_ms),
            )
            .where(and_(True, *usage_conditions(q)))
            .group_by(bucket, key)
            .order_by(bucket, key)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Bucket(int(b) * size_s, str(k), int(c), int(e), int(m), int(ls), int(ln)) for b, k, c, e, m, ls, ln in rows
        ]

    async def ledger_entries(self, user_id: int, *, limit: int = 20) -> list[dict[str, Any]]:
        """A user's latest money movements other than call charges (top-ups, adjustments)."""
        stmt = (
            select(ledger)
            .where(ledger.c.user_id == user_id, ledger.c.kind != "charge")
            .order_by(ledger.c.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
