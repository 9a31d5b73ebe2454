"""The console's usage reports (filters, totals, CSV, hourly/daily buckets) and chart
geometry, against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.console.charts import OTHER, line_chart, nice_ceiling, pivot
from imagerelay.console.reports import (
    DAY_S,
    HOUR_S,
    parse_usage_filter,
    totals_by_key,
    usage_csv,
    window,
)
from imagerelay.domain.records import UsageQuery, UsageRecord
from imagerelay.errors import InvalidRequest
from imagerelay.storage.accounts import Accounts
from imagerelay.storage.billing import Billing
from imagerelay.storage.db import TransactionRunner, create_engine, create_schema
from imagerelay.storage.schema import usage_records
from imagerelay.storage.usage_stats import UsageReports
from tests.support.services import drop_postgres_database, fresh_postgres_database

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Accounts, Billing]]:
    dropped = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        url, dropped = fresh_postgres_database()
    engine = create_engine(url)
    await create_schema(engine)
    runner = TransactionRunner(url)
    try:
        yield engine, Accounts(engine), Billing(engine, runner)
    finally:
        await engine.dispose()
        await runner.aclose()
        if dropped:
            drop_postgres_database(dropped)


async def _seed(
    engine: AsyncEngine,
    billing: Billing,
    user_id: int,
    token_id: int,
    rows: list[tuple[float, str, str | None, int, int, int | None]],
) -> None:
    """(created_at, route, channel, status, cost, upstream latency) records."""
    for i, (at, route, channel, status, cost, upstream) in enumerate(rows):
        rid = f"r{i}"
        await billing.record_only(
            UsageRecord(
                request_id=rid,
                user_id=user_id,
                token_id=token_id,
                group="g",
                model="gpt-image-2",
                route=route,
                endpoint="generations",
                status=status,
                billing_mode="per_call",
                latency_ms=100,
                channel=channel,
                upstream_latency_ms=upstream,
            )
        )
        async with engine.begin() as conn:  # record_only charges nothing and stamps "now"
            await conn.execute(
                update(usage_records).where(usage_records.c.request_id == rid).values(created_at=at, cost_micros=cost)
            )


ROWS = [
    (T0 + 10, "legacy", "sim-a", 200, 30_000, 400),
    (T0 + 20, "legacy", "sim-a", 200, 30_000, 600),
    (T0 + 30, "official", "sim-b", 502, 0, None),
    (T0 + HOUR_S + 5, "official", "sim-b", 200, 123_457, 1000),
    (T0 + DAY_S + 5, "legacy", None, 400, 0, None),
]


async def test_filters_totals_and_paging(db: tuple[AsyncEngine, Accounts, Billing]) -> None:
    engine, accounts, billing = db
    user = await accounts.get_or_create_user("=alice")
    await accounts.create_token(user.id, "g", name="+main")
    await _seed(engine, billing, user.id, 1, ROWS)

    totals = await UsageReports(engine).totals(UsageQuery())
    assert (totals.calls, totals.errors, totals.cost_micros) == (5, 2, 183_457)
    assert totals.avg_upstream_latency_ms == 667  # (400 + 600 + 1000) / 3, rounded

    day1 = parse_usage_filter({"since": "2026-01-01", "until": "2026-01-01"})
    assert (await UsageReports(engine).totals(day1)).calls == 4
    errors = parse_usage_filter({"status": "error"})
    assert (await UsageReports(engine).totals(errors)).calls == 2
    exact = parse_usage_filter({"status": "502", "channel": "sim-b"})
    assert (await UsageReports(engine).totals(exact)).calls == 1
    assert (await UsageReports(engine).totals(UsageQuery(user_id=user.id + 1))).calls == 0

    first, more = await UsageReports(engine).named_rows(UsageQuery(), limit=2)
    assert more and [r["id"] for r in first] == [5, 4]
    assert first[0]["user_name"] == "=alice" and first[0]["token_name"] == "+main"
    rest, more = await UsageReports(engine).named_rows(UsageQuery(), limit=10, before_id=first[-1]["id"])
    assert not more and [r["id"] for r in rest] == [3, 2, 1]


async def test_csv_is_exact_and_formula_safe(db: tuple[AsyncEngine, Accounts, Billing]) -> None:
    engine, accounts, billing = db
    user = await accounts.get_or_create_user("=alice")
    await accounts.create_token(user.id, "g", name="+main")
    await _seed(engine, billing, user.id, 1, ROWS)
    text = "".join(
        [chunk async for chunk in usage_csv(UsageReports(engine), parse_usage_filter({"route": "official"}))]
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["status"] for r in rows] == ["200", "502"]
    assert rows[0]["cost_usd"] == "0.123457" and rows[1]["cost_usd"] == "0.000000"
    assert rows[0]["user"] == "'=alice" and rows[0]["token"] == "'+main"
    assert rows[0]["time_utc"] == "2026-01-01 01:00:05"


async def test_buckets_by_hour_route_and_channel(db: tuple[AsyncEngine, Accounts, Billing]) -> None:
    engine, accounts, billing = db
    user = await accounts.get_or_create_user("bob")
    await _seed(engine, billing, user.id, 1, ROWS)
    by_route = await UsageReports(engine).buckets(UsageQuery(since=T0, until=T0 + DAY_S), size_s=HOUR_S, by="route")
    cells = {(b.start, b.key): (b.calls, b.errors, b.cost_micros, b.avg_upstream_latency_ms) for b in by_route}
    assert cells == {
        (int(T0), "legacy"): (2, 0, 60_000, 500.0),
        (int(T0), "official"): (1, 1, 0, None),
        (int(T0) + HOUR_S, "official"): (1, 0, 123_457, 1000.0),
    }
    per_route = [(t.key, t.calls, t.errors, t.cost_micros, t.avg_upstream_latency_ms) for t in totals_by_key(by_route)]
    assert per_route == [("legacy", 2, 0, 60_000, 500), ("official", 2, 1, 123_457, 1000)]  # ties: by name
    by_channel = await UsageReports(engine).buckets(UsageQuery(), size_s=DAY_S, by="channel")
    assert {(b.start - int(T0), b.key, b.calls) for b in by_channel} == {
        (0, "sim-a", 2),
        (0, "sim-b", 2),
        (DAY_S, "(none)", 1),
    }


def test_filter_parsing_refuses_with_the_field_named() -> None:
    for params, param in [
        ({"since": "2026-13-01"}, "since"),
        ({"status": "bad"}, "status"),
        ({"token": "1e3"}, "token"),
        ({"model": "a\x00b"}, "model"),
        ({"since": "2026-01-02", "until": "2026-01-01"}, "until"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            parse_usage_filter(params)
        assert err.value.param == param
    f = parse_usage_filter({"since": "2026-01-01", "until": "2026-01-01", "token": "7"})
    assert (f.since, f.until, f.token_id) == (T0, T0 + DAY_S, 7)


def test_window_is_aligned_to_whole_buckets() -> None:
    since, until, size = window(T0 + 5 * HOUR_S + 17, "24h")
    assert (size, until - since, until) == (HOUR_S, 24 * HOUR_S, T0 + 6 * HOUR_S)
    since, until, size = window(T0 + 5, "7d")
    assert (size, since, until) == (DAY_S, T0 - 6 * DAY_S, T0 + DAY_S)
    with pytest.raises(InvalidRequest):
        window(T0, "1y")


def test_pivot_keeps_the_busiest_series_and_sums_the_rest() -> None:
    from imagerelay.domain.records import Bucket

    starts = [0, 3600]
    buckets = [Bucket(0, f"ch{i}", 10 - i, 1, 1_000_000, 100 * i, 1) for i in range(8)]
    buckets.append(Bucket(3600, "ch0", 1, 0, 0, 0, 0))
    series = pivot(buckets, starts, "calls")
    assert [s.name for s in series] == ["ch0", "ch1", "ch2", "ch3", "ch4", "ch5", OTHER]
    assert series[0].values == [10.0, 1.0] and series[-1].values == [4.0 + 3.0, 0.0]
    latency = pivot(buckets, starts, "latency")
    assert latency[1].values == [100.0, None]  # a mean has no value in an empty bucket
    assert latency[0].values == [0.0, None]  # ch0's second bucket has no upstream latency


def test_chart_geometry() -> None:
    from imagerelay.console.charts import Series

    assert [nice_ceiling(v) for v in (0, 0.3, 7, 12, 240, 1000)] == [1.0, 0.5, 10, 20, 250, 1000]
    chart = line_chart("Calls", [0, 3600, 7200], 3600, [Series("a", [0.0, 5.0, None]), Series("b", [None, 2.0, None])])
    assert chart.lines[0].segments == ["56.0,192.0 342.0,12.0"]  # the gap at the None ends the run
    assert chart.lines[1].segments == [] and chart.lines[1].dots == [(342.0, 120.0)]  # a lone point is a dot
    assert chart.y_ticks[-1][1] == "5" and [t[1] for t in chart.x_ticks] == ["00:00", "01:00", "02:00"]
    assert line_chart("Empty", [0], 3600, []).empty
    assert not line_chart("No errors", [0, 3600], 3600, [Series("a", [0.0, 0.0])]).empty


async def test_the_dashboards_time_filter_over_every_user_uses_an_index(
    db: tuple[AsyncEngine, Accounts, Billing],
) -> None:
    """The dashboard filters every user's records by time: without ``ix_usage_created``
    (migration 0006) that read the whole table (PostgreSQL chose a sequential scan over
    200,000 records; figures in docs/migrations.md)."""
    from sqlalchemy import and_, func, select, text

    from imagerelay.storage.usage_stats import usage_conditions

    engine, _, _ = db
    stmt = select(func.count()).where(and_(True, *usage_conditions(UsageQuery(since=1.0e9, until=1.1e9))))
    sql = str(stmt.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in (await conn.execute(text("EXPLAIN QUERY PLAN " + sql))).all())
        else:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table: ask what it could use
            plan = " ".join(str(r[0]) for r in (await conn.execute(text("EXPLAIN " + sql))).all())
    assert "ix_usage_created" in plan, plan
