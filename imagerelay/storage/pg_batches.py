"""Group commit for the money movements on PostgreSQL.

Each movement is one statement in autocommit (storage/movements.py), and each commit
waits for PostgreSQL's WAL flush while the hot rows it wrote (a user's balance, a
token) stay locked. With one busy account every hold and settle queued on that lock
for a flush each: 0.33-0.39x the SQLite throughput at concurrency 64, where SQLite
commits many movements at once (storage/db.py).

Here the runs of one movement that arrive while an earlier batch of it is in flight
wait for it, then go together: one ``fetchmany`` (asyncpg pipelines the statements
and ends them with one Sync, so they are one implicit transaction: one round trip,
one commit, one flush). A lone call (concurrency 1) waits for nothing and runs at once.

What stays as it was:
- Each movement is the same statement, run in order inside the transaction, and
  under READ COMMITTED each statement sees the ones before it: two holds in one batch
  check the balance one after the other, so a batch can no more overspend than two
  autocommit statements could.
- Failure isolation: when PostgreSQL refuses the batch (a repeated settle's unique
  violation, a deadlock), it rolled back whole, and every movement in it is run
  again alone, so only the failing one fails. A failure that may have left the batch
  committed (the connection lost mid-call) is not retried: it goes to every caller,
  as a lost connection does to a single statement.
- A caller is answered only after the commit that contains its movement.
- A caller cancelled while waiting for a batch is left out of it (nothing happens
  for it); once its batch is sent, its movement stands, as a statement already sent
  does.

Locks: a batch holds every row it locked until its commit, so two batches in flight
at once (a batch of holds and a batch of settles) must lock rows in one order: each
batch runs its movements sorted by :attr:`Movement.batch_order` (user, then token),
the order every movement locks them in. A hold row is locked before its user, so a
batch holding the user can still meet a transaction that locked one of its hold rows
first (the reconciler dropping a stale hold): PostgreSQL breaks that deadlock after
``deadlock_timeout`` and its victim, rolled back whole, is run again (see
:func:`is_deadlock`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagerelay.storage.movements import Movement

# Movements per transaction. It bounds how long a batch holds its locks, and so how
# fairly processes sharing a hot account take turns: PostgreSQL grants a row lock to
# its waiters in order, so batches of 16 from several gateway hosts interleave, where
# one batch of everything one host had queued took a whole balance in one go.
MAX_BATCH = 16

_Waiting = tuple[list[Any], "asyncio.Future[Any]"]
_Acquire = Callable[[], Awaitable[Any]]


def _order(movement: Movement, params: Any) -> tuple[int, ...]:
    return tuple(-1 if params.get(name) is None else int(params[name]) for name in movement.batch_order)


class PgBatches:
    """The waiting runs of each batched movement, and the one batch of each in flight.

    ``pool``: returns the asyncpg pool (opened on first use)."""

    def __init__(self, pool: Callable[[], Awaitable[Any]]) -> None:
        self._pool = pool
        self._waiting: dict[str, list[tuple[tuple[int, ...], list[Any], asyncio.Future[Any]]]] = {}
        self._flushing: dict[str, asyncio.Task[None]] = {}

    async def run(self, movement: Movement, params: Any) -> Any:
        """Run ``movement`` in the next batch of its kind; its one row."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(movement.name, []).append((_order(movement, params), movement.pg_args(params), future))
        if movement.name not in self._flushing:
            # The task starts in the next turn of the loop: runs that arrive in this
            # turn join the first batch too.
            self._flushing[movement.name] = asyncio.get_running_loop().create_task(self._flush(movement))
        return await future

    async def _flush(self, movement: Movement) -> None:
        try:
            while True:
                waiting = self._waiting.get(movement.name)
                batch = [w for w in (waiting or ())[:MAX_BATCH] if not w[2].cancelled()]
                if waiting is not None:
                    del waiting[:MAX_BATCH]
                if not batch:
                    if not waiting:
                        return
                    continue
                batch.sort(key=lambda w: w[0])
                await self._run_batch(movement, [(args, future) for _order, args, future in batch])
        except asyncio.CancelledError:
            # The process is stopping: nobody waiting will be run.
            for _order, _args, future in self._waiting.pop(movement.name, ()):
                future.cancel()
            raise
        finally:
            del self._flushing[movement.name]

    async def _run_batch(self, movement: Movement, batch: list[_Waiting], *, reruns: int = 0) -> None:
        """``reruns``: how often this movement was already run again on its own after its
        batch was refused; a deadlock's victim is run again up to DEADLOCK_RERUNS times
        (the reconciler can meet the same batch twice in a row)."""
        import asyncpg

        try:
            pool = await self._pool()
            async with pool.acquire() as conn:
                if len(batch) == 1:
                    rows = [await conn.fetchrow(movement.pg_sql, *batch[0][0])]
                else:
                    rows = await conn.fetchmany(movement.pg_sql, [args for args, _future in batch])
                    assert len(rows) == len(batch), "every movement statement answers one row"
        except asyncpg.PostgresError as exc:
            if _rolled_back(exc) and (len(batch) > 1 or (is_deadlock(exc) and reruns < DEADLOCK_RERUNS)):
                # PostgreSQL refused the batch, so all of it rolled back: run each
                # movement alone, so that only the one at fault fails (a deadlock's
                # victim was at fault of nothing, and runs again).
                await asyncio.gather(*(self._run_batch(movement, [one], reruns=reruns + 1) for one in batch))
                return
            for _args, future in batch:
                _answer(future, exc)
            return
        except Exception as exc:  # noqa: BLE001 - may have committed: every caller gets it, none is retried
            for _args, future in batch:
                _answer(future, exc)
            return
        except BaseException:
            for _args, future in batch:
                future.cancel()
            raise
        for (_args, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)


def _rolled_back(exc: BaseException) -> bool:
    """An ERROR the server reported for the batch (it then rolled back): not a lost
    connection or a FATAL, after which the commit may or may not have happened."""
    import asyncpg

    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return severity == "ERROR" and not isinstance(exc, asyncpg.PostgresConnectionError)


# How often a deadlock's victim is run again before its caller gets the error. Each round
# costs PostgreSQL's deadlock_timeout (1 s) at most, and the victim's second meeting with the
# same reconciler pass was seen (1 run in ~40 of the unit race test with a single rerun).
DEADLOCK_RERUNS = 4


def is_deadlock(exc: BaseException) -> bool:
    """PostgreSQL chose this transaction as a deadlock's victim and rolled it back.

    Batches can deadlock where single statements could not: a batch keeps the user's
    row locked from one movement to the next, and the next may want a hold row that
    another transaction (the reconciler's, dropping that hold) locked before waiting
    for the user. Rare, and PostgreSQL breaks it after ``deadlock_timeout`` (1 s)."""
    return getattr(exc, "sqlstate", None) == "40P01"


def _answer(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
