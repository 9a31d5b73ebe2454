"""Totals and per-day sums of usage records under the same filters as ``usage_page``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.storage.billing import UsageQuery, usage_conditions
from imagerelay.storage.schema import usage_records

DAY_S = 86400


@dataclass(frozen=True, slots=True)
class UsageTotals:
    calls: int
    failed: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class DaySum:
    day: int  # days since the epoch (UTC)
    calls: int
    failed: int
    cost_micros: int


def _sums() -> list[Any]:
    c = usage_records.c
    return [func.count(), func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0),
            func.coalesce(func.sum(c.cost_micros), 0)]


async def usage_totals(engine: AsyncEngine, q: UsageQuery) -> UsageTotals:
    async with engine.connect() as conn:
        row = (await conn.execute(select(*_sums()).where(*usage_conditions(q)))).one()
    return UsageTotals(int(row[0]), int(row[1]), int(row[2]))


async def usage_by_day(engine: AsyncEngine, q: UsageQuery) -> list[DaySum]:
    """One sum per UTC day that has records, oldest first (the caller bounds the range)."""
    ts = usage_records.c.created_at / DAY_S
    # floor() exists on PostgreSQL; SQLite's CAST truncates, which is floor for times after 1970.
    day = func.floor(ts) if engine.dialect.name == "postgresql" else cast(ts, Integer)
    stmt = select(day.label("day"), *_sums()).where(*usage_conditions(q)).group_by(day).order_by(day)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [DaySum(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]
