"""Database connection: one async SQLAlchemy engine for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy
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


class TransactionRunner:
    """Short money transactions as plain functions of a connection.

    Why not the async engine: with SQLAlchemy's asyncio layer every statement is a
    greenlet switch plus a thread hop (aiosqlite) or an await, which measured 5.4 ms
    of CPU per hold+settle. Here one transaction is one function call:

    - SQLite: raw sqlite3 (WAL); a transaction is ~0.05 ms of CPU, so it runs
      inline on the event loop, where a thread hand-off would cost more in
      wake-ups (and the GIL serialises it anyway). The inline connection never
      waits for SQLite's file lock: if another connection holds it (the async
      engine, which needs the loop to finish its own transaction), the
      transaction goes to a dedicated thread whose connection may wait.
    - PostgreSQL: a synchronous SQLAlchemy engine (psycopg) in a small thread
      pool, so network round trips never block the event loop.
    """

    def __init__(self, url: str) -> None:
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.engine: sqlalchemy.Engine | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ":memory:"
            self._sqlite = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._sqlite, None)
            self._inline = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
            _sqlite_pragmas(self._inline, None)
            self._inline.execute("PRAGMA busy_timeout=0")
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="imagerelay-sqlite")
        else:
            threads = 8
            sync_url = "postgresql+psycopg://" + url.split("://", 1)[1]
            self.engine = sqlalchemy.create_engine(sync_url, pool_size=threads, max_overflow=0, pool_pre_ping=True)
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="imagerelay-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        if self._sqlite is None:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, fn, args)
        try:
            self._inline.execute("BEGIN IMMEDIATE")  # take the write lock up front, or fail at once
        except sqlite3.OperationalError:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._sqlite_transaction, self._sqlite, fn, args
            )
        return self._finish(self._inline, fn, args)

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

    def _transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self.engine is not None
        with self.engine.begin() as conn:
            return fn(conn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._sqlite is not None:
            self._sqlite.close()
            self._inline.close()
        if self.engine is not None:
            self.engine.dispose()


__all__ = ["Connection", "TransactionRunner", "async_url", "create_engine", "create_schema"]


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
