"""Cheap reads for the scrape-time gauges (open holds, the job queue).

Run when ``/metrics`` is scraped, never per call: two aggregate queries over tables
that hold only calls in flight (holds) and indexed job states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.storage.schema import holds, jobs


@dataclass(frozen=True, slots=True)
class QueueGauges:
    open_holds: int
    held_micros: int
    jobs_queued: int
    jobs_running: int
    oldest_queued_age_s: float  # 0 when nothing is queued


class Gauges:
    """The database's side of ``/metrics`` and ``/readyz`` (``services.gauges``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self) -> QueueGauges:
        async with self._engine.connect() as conn:
            held = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(holds.c.amount_micros), 0)).select_from(holds)
                )
            ).one()
            rows = (
                await conn.execute(
                    select(jobs.c.status, func.count(), func.min(jobs.c.created_at))
                    .where(jobs.c.status.in_(("queued", "running")))
                    .group_by(jobs.c.status)
                )
            ).all()
        by_status = {status: (count, oldest) for status, count, oldest in rows}
        queued, oldest = by_status.get("queued", (0, None))
        return QueueGauges(
            open_holds=int(held[0]),
            held_micros=int(held[1]),
            jobs_queued=int(queued),
            jobs_running=int(by_status.get("running", (0, None))[0]),
            oldest_queued_age_s=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
        )

    async def ping(self) -> None:
        """Raise if the database does not answer a trivial query."""
        async with self._engine.connect() as conn:
            await conn.execute(select(1))
