"""Database connection: one async SQLAlchemy engine for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from imagerelay.private_files import touch_private
from imagerelay.storage.pg_batches import DEADLOCK_RERUNS, PgBatches, is_deadlock

if TYPE_CHECKING:
    from imagerelay.storage.movements import Movement


def async_url(url: str) -> str:
    """Map a plain database URL to its async driver (aiosqlite / asyncpg: the money
    statements' driver too, so the process speaks to PostgreSQL through one)."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite" + url[len("sqlite") :]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _sqlite_path(url: str) -> str:
    """The file of a SQLite URL (``:memory:`` for none), made 0600 if it is new: SQLite
    gives the -wal and -shm files it creates next to it the database file's mode."""
    path = url.split(":///", 1)[1] if ":///" in url else ":memory:"
    if path != ":memory:" and not path.startswith("file:"):
        touch_private(Path(path.split("?", 1)[0]))
    return path


def create_engine(url: str) -> AsyncEngine:
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        _sqlite_path(aurl)
    kwargs: dict[str, Any] = {}
    if aurl.startswith("sqlite"):
        # One connection per process: SQLite allows one writer at a time, and several
        # connections would queue on its file lock with sleeping retries (busy_timeout),
        # which costs far more than queueing on one connection in the event loop.
        kwargs["connect_args"] = {"timeout": 30}
        kwargs["pool_size"] = 1
        kwargs["max_overflow"] = 0
        kwargs["pool_timeout"] = 300
    else:
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(aurl, **kwargs)
    if aurl.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)

    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run during a write; NORMAL sync is crash-safe in WAL mode.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


T = TypeVar("T")


class _SqliteResult:
    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def first(self) -> Any:
        return self._cursor.fetchone()

    def all(self) -> list[Any]:
        return self._cursor.fetchall()


class _SqliteTx:
    """The slice of SQLAlchemy's ``Connection`` the money transactions use
    (``execute(text, params)`` with ``:name`` parameters, ``rollback()``), on a raw
    sqlite3 connection: SQLAlchemy's per-statement bookkeeping was half the cost
    of a hold+settle on SQLite (py-spy), and these statements need none of it.

    Each transaction runs inside its own savepoint of a shared commit (see
    :meth:`TransactionRunner.run`), or alone in its commit, so ``rollback()`` undoes
    this transaction only."""

    __slots__ = ("_conn", "_alone")

    def __init__(self, conn: sqlite3.Connection, *, alone: bool = False) -> None:
        self._conn = conn
        self._alone = alone

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> _SqliteResult:
        return _SqliteResult(self._conn.execute(statement.text, params or {}))

    def rollback(self) -> None:
        if self._alone:
            # What follows still belongs to one transaction, as after ROLLBACK TO.
            self._conn.rollback()
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            self._conn.execute("ROLLBACK TO one_transaction")


def _run_movement(tx: _SqliteTx, movement: Movement, params: Mapping[str, Any]) -> dict[str, Any] | None:
    return movement.run_sqlite(tx.connection, dict(params))  # the steps add their values to it


_Pending = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | None"]


def _run_batch(conn: sqlite3.Connection, batch: list[_Pending], begun: bool) -> list[tuple[bool, Any]]:
    """Run every transaction of ``batch`` in one SQLite transaction, each in its own
    savepoint, and commit once. Returns (ok, result-or-exception) per transaction;
    nothing is reported before the commit succeeded."""
    if not begun:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
    outcomes: list[tuple[bool, Any]] = []
    # Alone in its commit, a transaction needs no savepoint (two statements saved per
    # call, ~10% of a movement's): a failure rolls the whole commit back.
    alone = len(batch) == 1
    try:
        for fn, args, _future in batch:
            if not alone:
                conn.execute("SAVEPOINT one_transaction")
            try:
                outcomes.append((True, fn(_SqliteTx(conn, alone=alone), *args)))
            except Exception as exc:  # noqa: BLE001 - it belongs to that caller alone
                if alone:
                    conn.rollback()
                    return [(False, exc)]
                conn.execute("ROLLBACK TO one_transaction")
                outcomes.append((False, exc))
            if not alone:
                conn.execute("RELEASE one_transaction")
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return outcomes


CHECKPOINT_EVERY_S = 0.5


def _checkpoint_loop(path: str, stop: threading.Event) -> None:
    """Copy committed WAL pages into the database file now and then (see __init__)."""
    if path == ":memory:":
        return
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        while not stop.wait(CHECKPOINT_EVERY_S):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                continue  # busy or locked: the next round will do it
    finally:
        conn.close()


def _resolve(batch: list[_Pending], outcomes: list[tuple[bool, Any]]) -> None:
    for (_fn, _args, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future is None or future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for _fn, _args, future in batch:
        if future is not None and not future.cancelled():
            future.set_exception(exc)


def _deliver(batch: list[_Pending], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
    if done.cancelled():
        _fail(batch, asyncio.CancelledError())
    elif done.exception() is not None:
        _fail(batch, done.exception())  # type: ignore[arg-type]
    else:
        _resolve(batch, done.result())


async def _keep_session(_conn: Any) -> None:
    """Replaces asyncpg's per-release reset query (an extra round trip for every
    statement): money statements leave no session state (no SET, LISTEN, cursors or
    advisory locks) to reset."""


class TransactionRunner:
    """Where the money statements run, per backend.

    Why not the async engine: with SQLAlchemy's asyncio layer every statement is a
    greenlet switch plus a thread hop (aiosqlite) or an await, which measured 5.4 ms
    of CPU per hold+settle.

    - SQLite (:meth:`run`): a transaction is a plain function of a raw sqlite3
      connection (WAL); it costs ~0.05 ms of CPU, so it runs inline on the event
      loop, where a thread hand-off would cost more in wake-ups (and the GIL
      serialises it anyway). The inline connection never waits for SQLite's file
      lock: if another connection holds it (the async engine, which needs the loop
      to finish its own transaction), the transaction goes to a dedicated thread
      whose connection may wait.
    - PostgreSQL (:meth:`fetchrow`): every money movement is ONE statement, on an
      asyncpg pool on the event loop (prepared statements, binary protocol); the
      runs of one movement that arrive together share one transaction and one
      commit (storage/pg_batches.py). A hot balance row stays locked for one batch
      plus its commit, never across client round trips. The
      synchronous driver in threads this replaced did ~2.5x fewer hold+settle per
      second on one user: each transaction was BEGIN/UPDATE/INSERT/COMMIT round
      trips with the row lock held across thread hops and GIL waits.
    """

    def __init__(self, url: str, *, pg_pool_size: int = 8, pg_synchronous_commit: str | None = None) -> None:
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pg_dsn = ""
        self._pg_pool_size = pg_pool_size
        self._pg_settings = {
            # The money statements rely on READ COMMITTED re-checking a guard against
            # the newest row version after a lock wait.
            "default_transaction_isolation": "read committed",
            # Unset: the server's (on by default); see config.py.
            **({"synchronous_commit": pg_synchronous_commit} if pg_synchronous_commit else {}),
        }
        self._pg_pool: Any = None  # asyncpg.Pool, created on first use (it needs the running loop)
        self._pg_pool_lock: asyncio.Lock | None = None
        if self.is_sqlite:
            path = _sqlite_path(url)
            self._sqlite = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._sqlite, None)
            self._inline = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._inline, None)
            self._inline.execute("PRAGMA busy_timeout=0")
            # SQLite checkpoints the WAL inside whichever commit crosses 1,000 pages, and a
            # checkpoint fsyncs: a multi-millisecond stall of the event loop every hundred
            # calls or so (the c=1 p99). A thread does it instead, off the loop; PASSIVE
            # checkpoints never block writers, and sqlite3 releases the GIL while it works.
            self._inline.execute("PRAGMA wal_autocheckpoint=0")
            self._sqlite.execute("PRAGMA wal_autocheckpoint=0")
            self._stop_checkpoints = threading.Event()
            self._checkpointer = threading.Thread(
                target=_checkpoint_loop, args=(path, self._stop_checkpoints), name="imagerelay-checkpoint", daemon=True
            )
            self._checkpointer.start()
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="imagerelay-sqlite")
            self._pending: list[_Pending] = []
            self._turn_taken = False
        else:
            # asyncpg takes a plain libpq URL: drop any SQLAlchemy driver suffix.
            self._pg_dsn = "postgresql://" + url.split("://", 1)[1]
        self._pg_batches = PgBatches(self._pg_pool_or_open)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """SQLite: run ``fn(conn, *args)`` as one write transaction.

        Group commit: the first transaction in a turn of the event loop runs at once,
        inline (no extra loop turn: what a lone call at concurrency 1 wants); those
        that arrive later in the same turn share one COMMIT in the next turn, each in
        its own savepoint so one failing or rolling back leaves the others alone. The
        commit was the largest single cost of a call on SQLite (py-spy); under load it
        is now paid once per batch. A caller's result is released only after the
        commit that contains it, so durability is what one transaction per call gave.
        """
        assert self._executor is not None and self._sqlite is not None
        loop = asyncio.get_running_loop()
        if not self._turn_taken:
            self._turn_taken = True
            loop.call_soon(self._end_turn)
            try:
                self._inline.execute("BEGIN IMMEDIATE")  # take the write lock now, or fail at once
            except sqlite3.OperationalError:
                pass  # locked elsewhere: queue it, and the flush waits on a thread
            else:
                [(ok, value)] = _run_batch(self._inline, [(fn, args, None)], True)
                if ok:
                    return value  # type: ignore[no-any-return]
                raise value
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _end_turn(self) -> None:
        self._turn_taken = False

    def _flush(self) -> None:
        # A caller cancelled while queued never ran: skip it, so nothing happens for it.
        batch = [pending for pending in self._pending if pending[2] is not None and not pending[2].cancelled()]
        self._pending = []
        if not batch:
            return
        assert self._sqlite is not None
        try:
            self._inline.execute("BEGIN IMMEDIATE")  # take the write lock now, or fail at once
        except sqlite3.OperationalError:
            # Another connection holds the lock (the async engine, which needs this
            # loop to finish its own transaction): wait for it on a thread.
            waiting = asyncio.get_running_loop().run_in_executor(self._executor, _run_batch, self._sqlite, batch, False)
            waiting.add_done_callback(lambda done: _deliver(batch, done))
            return
        try:
            outcomes = _run_batch(self._inline, batch, True)
        except BaseException as exc:  # noqa: BLE001 - the commit failed: nobody's transaction happened
            _fail(batch, exc)
            return
        _resolve(batch, outcomes)

    async def movement(self, movement: Movement, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run one money movement (storage/movements.py) as one transaction: on SQLite
        its steps inside a group commit (:meth:`run`), on PostgreSQL its one statement
        in autocommit (:meth:`fetchrow`). Returns its result row, or None."""
        if self.is_sqlite:
            return await self.run(_run_movement, movement, params)
        if movement.batch_order:
            return movement.pg_result(await self._pg_batches.run(movement, params))
        for rerun in range(DEADLOCK_RERUNS + 1):
            try:
                return movement.pg_result(await self.fetchrow(movement.pg_sql, *movement.pg_args(params)))
            except Exception as exc:
                # Rolled back whole, as a victim of a batch's deadlock (storage/pg_batches.py): again.
                if not is_deadlock(exc) or rerun == DEADLOCK_RERUNS:
                    raise
        raise AssertionError("unreachable: the last rerun returns or raises")

    async def fetchrow(self, statement: str, *args: Any) -> Any:
        """PostgreSQL: run one statement in autocommit; its first row (or None)."""
        pool = self._pg_pool or await self._open_pg_pool()
        async with pool.acquire() as conn:
            return await conn.fetchrow(statement, *args)

    async def _pg_pool_or_open(self) -> Any:
        return self._pg_pool or await self._open_pg_pool()

    async def _open_pg_pool(self) -> Any:
        import asyncpg

        if self._pg_pool_lock is None:
            self._pg_pool_lock = asyncio.Lock()
        async with self._pg_pool_lock:
            if self._pg_pool is None:
                self._pg_pool = await asyncpg.create_pool(
                    self._pg_dsn,
                    min_size=1,
                    max_size=self._pg_pool_size,
                    server_settings=self._pg_settings,
                    reset=_keep_session,
                )
        return self._pg_pool

    async def aclose(self) -> None:
        if self._pg_pool is not None:
            pool, self._pg_pool = self._pg_pool, None
            await pool.close()
        self.close()

    def close(self) -> None:
        if self._pg_pool is not None:
            self._pg_pool.terminate()
            self._pg_pool = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._sqlite is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join(timeout=5)
            self._sqlite.close()
            self._inline.close()


__all__ = ["Connection", "TransactionRunner", "async_url", "create_engine", "create_schema"]


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the engine's database to this release's schema: create it when empty,
    refuse one that is behind (storage/migrate.py)."""
    from imagerelay.storage.migrate import prepare

    await asyncio.to_thread(prepare, engine.url.render_as_string(hide_password=False))
