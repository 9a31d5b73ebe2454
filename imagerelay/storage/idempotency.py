"""``Idempotency-Key``: a retried call returns the first call's answer, charged once.

The SDK retries after timeouts, and image calls are slow, so a retry often arrives
while the first call is still running. The first call claims ``(user, key)`` with an
INSERT (the primary key makes the claim atomic on SQLite and PostgreSQL); a retry
with the same fingerprint waits for the stored answer, a retry with another body is
a 409. A call that fails gives its claim back, so the retry runs afresh; failed
calls cost nothing, so no money can be lost that way.

A call cut short by its process dying (``kill -9``) cannot give its claim back, so a
retry takes over a running claim whose process is gone (storage/instances.py) or that
is older than a call can last (``running_ttl_s``: the call deadline plus the hold's
margin). The interrupted call was released free, so the retry is charged once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagerelay.errors import ApiError
from imagerelay.storage.instances import Instances
from imagerelay.storage.schema import idempotency

KEEP_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


class IdempotencyConflict(ApiError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_conflict"


class IdempotencyStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        instances: Instances | None = None,
        running_ttl_s: float = KEEP_S,
        wait_s: float = 120.0,
        poll_s: float = 0.2,
    ) -> None:
        self._engine = engine
        self._instances = instances
        self._instance_id = instances.id if instances is not None else None
        self.running_ttl_s = running_ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s

    async def claim(self, user_id: int, key: str, fingerprint: str) -> Replay | None:
        """None: this call owns the key and must run. Replay: return the stored answer."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        idempotency.insert().values(
                            user_id=user_id,
                            key=key,
                            body_hash=fingerprint,
                            state="running",
                            created_at=time.time(),
                            instance_id=self._instance_id,
                        )
                    )
                return None
            except IntegrityError:
                pass
            async with self._engine.connect() as conn:
                row = (
                    (
                        await conn.execute(
                            select(idempotency).where(idempotency.c.user_id == user_id, idempotency.c.key == key)
                        )
                    )
                    .mappings()
                    .first()
                )
            if row is None:
                continue  # the first call failed and gave the key back: claim it now
            if row["body_hash"] != fingerprint:
                raise IdempotencyConflict(
                    "This Idempotency-Key was already used with a different request body; use a new key for a new request.",
                    param="Idempotency-Key",
                )
            if row["state"] == "done":
                return Replay(int(row["status"]), bytes(row["response"]))
            if await self._abandoned(row) and await self._take_over(row):
                return None
            if time.monotonic() >= deadline:
                raise IdempotencyConflict(
                    "A request with this Idempotency-Key is still running; retry later to get its result.",
                    param="Idempotency-Key",
                    headers={"retry-after": "10"},
                )
            await asyncio.sleep(self.poll_s)

    async def _abandoned(self, row: Any) -> bool:
        """A running claim nobody will finish: its process is gone, or it is older
        than any call can run."""
        if row["created_at"] < time.time() - self.running_ttl_s:
            return True
        return self._instances is not None and await self._instances.is_dead(row["instance_id"])

    async def _take_over(self, row: Any) -> bool:
        """Claim an abandoned key for this call; False if another retry was first
        (the claim changed since it was read)."""
        async with self._engine.begin() as conn:
            res = await conn.execute(
                update(idempotency)
                .where(
                    idempotency.c.user_id == row["user_id"],
                    idempotency.c.key == row["key"],
                    idempotency.c.state == "running",
                    idempotency.c.created_at == row["created_at"],
                )
                .values(created_at=time.time(), instance_id=self._instance_id)
            )
        return bool(res.rowcount == 1)

    def _mine(self) -> Any:
        # A claim taken over from this process (its lease lapsed) is no longer its to end.
        col = idempotency.c.instance_id
        return col.is_(None) if self._instance_id is None else col == self._instance_id

    async def finish(self, user_id: int, key: str, status: int, body: bytes) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(idempotency.c.user_id == user_id, idempotency.c.key == key, self._mine())
                .values(state="done", status=status, response=body)
            )

    async def abandon(self, user_id: int, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.user_id == user_id,
                    idempotency.c.key == key,
                    idempotency.c.state == "running",
                    self._mine(),
                )
            )

    async def purge(self, now: float | None = None) -> None:
        cutoff = (time.time() if now is None else now) - KEEP_S
        async with self._engine.begin() as conn:
            await conn.execute(delete(idempotency).where(idempotency.c.created_at < cutoff))
