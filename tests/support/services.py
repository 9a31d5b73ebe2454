"""Real database backends for storage tests: SQLite always, PostgreSQL when reachable.

With IMAGERELAY_REQUIRE_SERVICES=1 (CI) a missing PostgreSQL/Redis is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("IMAGERELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")
REDIS_URL = os.environ.get("IMAGERELAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    if os.environ.get("IMAGERELAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{service} is required in CI but {host}:{port} is not reachable")
    pytest.skip(f"{service} not reachable on {host}:{port}; start it to run this test")


def _address(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def pg_address() -> tuple[str, int]:
    """Where the test PostgreSQL is (IMAGERELAY_TEST_PG), to decide whether to skip."""
    return _address(PG_ADMIN_URL, 5432)


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async call to completion from synchronous test code: on this thread when no
    event loop runs here, else on a thread of its own (an async test calling a helper)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def pg_execute(url: str, sql: str) -> None:
    """One statement on its own connection, outside a transaction (asyncpg, the project's
    one PostgreSQL driver; CREATE/DROP DATABASE cannot run inside a transaction)."""
    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_coroutine(execute)


def fresh_postgres_database() -> tuple[str, str]:
    """Create an empty database; returns (url, name). Caller drops it with drop_postgres_database."""
    require("PostgreSQL", *pg_address())
    name = "imagerelay_test_" + uuid.uuid4().hex[:12]
    pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    pg_execute(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_url() -> str:
    """The test Redis, once it is known to be reachable (skip, or fail in CI, otherwise)."""
    require("Redis", *_address(REDIS_URL, 6379))
    return REDIS_URL


def fresh_redis_prefix() -> str:
    """A key prefix no other test uses; remove its keys with delete_redis_prefix."""
    return f"imagerelay-test:{uuid.uuid4().hex[:12]}:"


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def require_program(name: str, *candidates: str) -> str:
    """The path of a program the test starts itself (a load balancer from Debian…):
    skip when absent, fail in CI (IMAGERELAY_REQUIRE_SERVICES=1), where .ci/run installs it."""
    import shutil

    for candidate in (name, *candidates):
        path = shutil.which(candidate)
        if path:
            return path
    if os.environ.get("IMAGERELAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required in CI but is not installed (.ci/run installs it with apt-get)")
    pytest.skip(f"{name} is not installed; install it (apt-get install {name}) to run this test")


def sql_rows(url: str, sql: str, params: Sequence[Any] = ()) -> list[sa.Row[Any]]:
    """Run one statement (``?`` placeholders, in one transaction) on the database at
    ``url`` and return its rows: what tests read from a gateway's database directly,
    whichever backend it is on (SQLite's own driver, or asyncpg for PostgreSQL)."""
    parts = sql.split("?")
    text = parts[0] + "".join(f":p{i}{part}" for i, part in enumerate(parts[1:]))
    bound = sa.text(text).bindparams(**{f"p{i}": value for i, value in enumerate(params)})
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(bound)
                return list(result.fetchall()) if result.returns_rows else []
        finally:
            engine.dispose()

    async def run() -> list[sa.Row[Any]]:
        from sqlalchemy.ext.asyncio import create_async_engine

        aengine = create_async_engine("postgresql+asyncpg://" + url.split("://", 1)[1], poolclass=sa.NullPool)
        try:
            async with aengine.begin() as conn:
                result = await conn.execute(bound)
                return list(result.fetchall()) if result.returns_rows else []
        finally:
            await aengine.dispose()

    return run_coroutine(run)
