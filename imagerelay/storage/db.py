"""Database connection: one async SQLAlchemy engine for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from imagerelay.storage.schema import metadata


def async_url(url: str) -> str:
    """Map a plain database URL to its async driver (aiosqlite / psycopg 3)."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite" + url[len("sqlite") :]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str) -> AsyncEngine:
    aurl = async_url(url)
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
    of a hold+settle on SQLite (py-spy), and these statements need none of it."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> _SqliteResult:
        return _SqliteResult(self._conn.execute(statement.text, params or {}))

    def rollback(self) -> None:
        self._conn.rollback()


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
    - PostgreSQL (:meth:`fetchrow`): every money movement is ONE statement in
      autocommit, on an asyncpg pool on the event loop (prepared statements, binary
      protocol). A transaction is one round trip, and a hot balance row stays locked
      for one statement plus its commit, never across client round trips. The
      synchronous driver in threads this replaced did ~2.5x fewer hold+settle per
      second on one user: each transaction was BEGIN/UPDATE/INSERT/COMMIT round
      trips with the row lock held across thread hops and GIL waits.
    """

    def __init__(self, url: str, *, pg_pool_size: int = 8) -> None:
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pg_dsn = ""
        self._pg_pool_size = pg_pool_size
        self._pg_pool: Any = None  # asyncpg.Pool, created on first use (it needs the running loop)
        self._pg_pool_lock: asyncio.Lock | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ":memory:"
            self._sqlite = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._sqlite, None)
            self._inline = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._inline, None)
            self._inline.execute("PRAGMA busy_timeout=0")
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="imagerelay-sqlite")
        else:
            # asyncpg takes a plain libpq URL: drop any SQLAlchemy driver suffix.
            self._pg_dsn = "postgresql://" + url.split("://", 1)[1]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """SQLite: run ``fn(conn, *args)`` as one write transaction."""
        assert self._executor is not None and self._sqlite is not None
        try:
            self._inline.execute("BEGIN IMMEDIATE")  # take the write lock up front, or fail at once
        except sqlite3.OperationalError:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._sqlite_transaction, self._sqlite, fn, args
            )
        return self._finish(self._inline, fn, args)

    async def fetchrow(self, statement: str, *args: Any) -> Any:
        """PostgreSQL: run one statement in autocommit; its first row (or None)."""
        pool = self._pg_pool or await self._open_pg_pool()
        async with pool.acquire() as conn:
            return await conn.fetchrow(statement, *args)

    @contextlib.asynccontextmanager
    async def pg_transaction(self) -> AsyncIterator[Any]:
        """PostgreSQL: a connection inside one transaction (for rare, multi-statement work)."""
        pool = self._pg_pool or await self._open_pg_pool()
        async with pool.acquire() as conn, conn.transaction():
            yield conn

    async def _open_pg_pool(self) -> Any:
        import asyncpg

        if self._pg_pool_lock is None:
            self._pg_pool_lock = asyncio.Lock()
        async with self._pg_pool_lock:
            if self._pg_pool is None:
                self._pg_pool = await asyncpg.create_pool(
                    self._pg_dsn, min_size=1, max_size=self._pg_pool_size,
                    # The money statements rely on READ COMMITTED re-checking a guard
                    # against the newest row version after a lock wait.
                    server_settings={"default_transaction_isolation": "read committed"},
                    reset=_keep_session,
                )
        return self._pg_pool

    def _sqlite_transaction(self, conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
        return self._finish(conn, fn, args)

    @staticmethod
    def _finish(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            result = fn(_SqliteTx(conn), *args)
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        if conn.in_transaction:
            conn.commit()
        return result

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
            self._sqlite.close()
            self._inline.close()


__all__ = ["Connection", "TransactionRunner", "async_url", "create_engine", "create_schema"]


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
