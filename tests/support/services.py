"""Real database backends for storage tests: SQLite always, PostgreSQL when reachable.

With IMAGERELAY_REQUIRE_SERVICES=1 (CI) a missing PostgreSQL/Redis is a failure, not a skip.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_ADMIN_URL = os.environ.get("IMAGERELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
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


def fresh_postgres_database() -> tuple[str, str]:
    """Create an empty database; returns (url, name). Caller drops it with drop_postgres_database."""
    require("PostgreSQL", *pg_address())
    import psycopg

    name = "imagerelay_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
