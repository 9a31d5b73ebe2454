"""CPU per hold+settle through Billing, one at a time and 64 at once (group commit on
SQLite), on SQLite and optionally PostgreSQL (127.0.0.1:5432, a fresh database).

    .venv/bin/python bench/movements.py . [--pg]          # this checkout
    .venv/bin/python bench/movements.py /tmp/old [--pg]   # another checkout (git worktree), same API
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time

sys.path.insert(0, sys.argv[1])

from imagerelay.domain.records import UsageRecord  # noqa: E402
from imagerelay.storage.accounts import Accounts  # noqa: E402
from imagerelay.storage.billing import Billing  # noqa: E402
from imagerelay.storage.db import TransactionRunner, create_engine, create_schema  # noqa: E402

N = 2000


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def bench(url: str, label: str) -> None:
    engine = create_engine(url)
    await create_schema(engine)
    runner = TransactionRunner(url)
    billing = Billing(engine, runner)
    user = await Accounts(engine).get_or_create_user("u")
    await billing.adjust(user.id, 10**12, "bench")

    async def one(i: int) -> None:
        rec = UsageRecord(
            request_id=f"r{i}",
            user_id=user.id,
            token_id=1,
            group="g",
            model="m",
            route="r",
            endpoint="generations",
            status=200,
            billing_mode="per_call",
            latency_ms=1,
            cost_micros=5,
        )
        assert await billing.place_hold(f"r{i}", user.id, 10, 60, call=rec) == "ok"
        await billing.settle(rec)

    for i in range(200):
        await one(i)
    c0, w0 = cpu(), time.perf_counter()
    for i in range(1000, 1000 + N):
        await one(i)
    seq_cpu, seq_wall = (cpu() - c0) / N * 1e6, (time.perf_counter() - w0) / N * 1e6
    sem = asyncio.Semaphore(64)

    async def limited(i: int) -> None:
        async with sem:
            await one(i)

    c0, w0 = cpu(), time.perf_counter()
    await asyncio.gather(*(limited(i) for i in range(10000, 10000 + N)))
    par_cpu, par_rate = (cpu() - c0) / N * 1e6, N / (time.perf_counter() - w0)
    assert not await billing.audit()
    print(
        f"{label}: one at a time {seq_cpu:.0f} us CPU per hold+settle ({seq_wall:.0f} us wall); "
        f"64 at once {par_cpu:.0f} us CPU, {par_rate:.0f} per s"
    )
    await engine.dispose()
    await runner.aclose()


async def main() -> None:
    await bench(f"sqlite:///{tempfile.mkdtemp()}/m.db", "sqlite")
    if "--pg" in sys.argv:
        import asyncpg

        name = f"imagerelay_movements_{time.time_ns()}"
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            await bench(f"postgresql://postgres@127.0.0.1:5432/{name}", "postgresql")
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
