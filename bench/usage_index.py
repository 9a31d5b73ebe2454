"""The admin dashboard's query over 200,000 usage records, without and with the
``ix_usage_created`` index (migration 0006): EXPLAIN and the median time of 7 runs.

    .venv/bin/python bench/usage_index.py sqlite:////tmp/u.db sqlite+aiosqlite:////tmp/u.db
    .venv/bin/python bench/usage_index.py postgresql+psycopg://postgres@127.0.0.1/DB postgresql+asyncpg://postgres@127.0.0.1/DB

The database is emptied first (drop_all): give it a scratch one.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from imagerelay.console import reports
from imagerelay.storage.billing import UsageQuery
from imagerelay.storage.schema import metadata, usage_records

N = 200_000
NOW = time.time()


def seed(sync: sa.Engine) -> None:
    metadata.drop_all(sync)
    metadata.create_all(sync)
    rnd = random.Random(1)
    rows = [
        dict(
            request_id=f"req_{i}",
            user_id=rnd.randrange(500),
            token_id=rnd.randrange(2000),
            group_name="default",
            model="gpt-image-2",
            route="official",
            channel=rnd.choice(["a", "b", "c", None]),
            endpoint="generations",
            status=rnd.choice([200] * 9 + [502]),
            error_code=None,
            latency_ms=rnd.randrange(100, 9000),
            upstream_latency_ms=rnd.randrange(100, 9000),
            attempts=1,
            input_text_tokens=0,
            input_image_tokens=0,
            cached_tokens=0,
            output_tokens=0,
            cost_micros=30000,
            billing_mode="per_call",
            price_basis="{}",
            created_at=NOW - 90 * 86400 * (i / N),
        )
        for i in range(N)
    ]  # 90 days of records
    with sync.begin() as conn:
        for k in range(0, N, 10_000):
            conn.execute(usage_records.insert(), rows[k : k + 10_000])
        conn.execute(sa.text("ANALYZE"))


async def measure(url: str, label: str) -> None:
    engine = create_async_engine(url)
    since, until, size = reports.window(NOW, "24h")
    f = UsageQuery(since=since, until=until)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        await reports.usage_buckets(engine, f, size_s=size, by="route")
        await reports.usage_totals(engine, f)
        times.append((time.perf_counter() - started) * 1000)
    u = usage_records.c
    query = sa.select(sa.func.count()).where(u.created_at >= since, u.created_at < until)
    sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        plan = [" | ".join(str(x) for x in row) for row in (await conn.execute(sa.text(explain + sql))).all()]
    await engine.dispose()
    print(f"{label}: dashboard 24h (buckets + totals) median {statistics.median(times):.1f} ms of 7; plan: {plan}")


def main() -> None:
    sync_url, async_url = sys.argv[1], sys.argv[2]
    sync = sa.create_engine(sync_url)
    seed(sync)
    with sync.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_usage_created"))
    asyncio.run(measure(async_url, "without ix_usage_created"))
    with sync.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_usage_created ON usage_records (created_at)"))
        conn.execute(sa.text("ANALYZE"))
    asyncio.run(measure(async_url, "with ix_usage_created"))
    sync.dispose()


if __name__ == "__main__":
    main()
