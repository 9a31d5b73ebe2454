"""Which database and Redis the gateways of a test run use: one switch for the whole suite.

``IMAGERELAY_TEST_BACKEND=postgres`` (``./scripts/test --backend postgres``) runs every
gateway and every CLI command a test starts on PostgreSQL + Redis instead of the embedded
SQLite file and in-process limits. Each data directory gets a database of its own (created
on first use, dropped when its test ends) and a Redis key prefix of its own, so a gateway
restarted on the same data directory finds its data again, as it would on SQLite, and
tests running side by side (pytest-xdist) never see each other's rows or keys.

A test that names its own database or Redis in the environment it passes keeps them:
the switch only fills in what the test left to the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from sqlalchemy import Row

from tests.support import services

BACKEND = os.environ.get("IMAGERELAY_TEST_BACKEND", "sqlite").strip().lower() or "sqlite"
if BACKEND not in ("sqlite", "postgres"):
    raise RuntimeError(f"IMAGERELAY_TEST_BACKEND={BACKEND!r}: expected sqlite or postgres")

# Parameter values of tests that choose their database themselves: they already cover both
# backends in the SQLite pass, so the PostgreSQL pass does not run them again.
OWN_BACKEND_PARAMS = frozenset({"sqlite", "postgresql", "database-sqlite", "database-postgres"})


def on_postgres() -> bool:
    """The suite runs on PostgreSQL + Redis (the PostgreSQL pass)."""
    return BACKEND == "postgres"


def sqlite_only(reason: str) -> pytest.MarkDecorator:
    """Mark a test that is about the embedded SQLite file itself; the PostgreSQL pass skips it."""
    return pytest.mark.skipif(on_postgres(), reason=f"SQLite only: {reason}")


@dataclass
class _Backing:
    """The database and Redis prefix of one data directory, and the gateways using them."""

    database: str
    url: str
    redis_prefix: str
    serial: int
    processes: list[Popen[bytes]] = field(default_factory=list)

    def in_use(self) -> bool:
        return any(proc.poll() is None for proc in self.processes)


_backings: dict[Path, _Backing] = {}
_serial = 0


def _backing(data_dir: Path) -> _Backing:
    global _serial
    key = Path(data_dir).resolve()
    found = _backings.get(key)
    if found is None:
        url, name = services.fresh_postgres_database()
        _serial += 1
        found = _backings[key] = _Backing(name, url, services.fresh_redis_prefix(), _serial)
    return found


def env_for(data_dir: Path) -> dict[str, str]:
    """The environment variables that put a gateway or CLI command on ``data_dir`` onto the
    suite's backend: nothing on SQLite; that directory's database and Redis prefix on PostgreSQL."""
    if not on_postgres():
        return {}
    backing = _backing(data_dir)
    return {
        "IMAGERELAY_DATABASE_URL": backing.url,
        "IMAGERELAY_REDIS_URL": services.redis_url(),
        "IMAGERELAY_REDIS_PREFIX": backing.redis_prefix,
    }


def cli_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment for a CLI command on ``data_dir`` (os.environ, the backend, ``extra``)."""
    return {**os.environ, **env_for(data_dir), **(extra or {})}


def database_url(data_dir: Path) -> str:
    """The database a gateway on ``data_dir`` uses (its SQLite file, or its PostgreSQL database)."""
    if on_postgres():
        return _backing(data_dir).url
    return f"sqlite:///{(Path(data_dir) / 'imagerelay.db').resolve()}"


def query(data_dir: Path, sql: str, params: Sequence[Any] = ()) -> list[Row[Any]]:
    """Rows of one statement (``?`` placeholders) on the database of the gateway on ``data_dir``."""
    return services.sql_rows(database_url(data_dir), sql, params)


def track(data_dir: Path, process: Popen[bytes]) -> None:
    """Remember that ``process`` uses the backing of ``data_dir`` (not dropped while it runs)."""
    key = Path(data_dir).resolve()
    if key in _backings:
        _backings[key].processes.append(process)


def checkpoint() -> int:
    return _serial


def release(since: int = 0, *, everything: bool = False) -> None:
    """Drop the databases and Redis keys no gateway uses any more: those made after
    ``checkpoint()`` returned ``since`` (this test's), and older ones whose gateways have
    all stopped (a module's, after its last test); all of them with ``everything``."""
    for key, backing in list(_backings.items()):
        if not everything:
            if backing.in_use():
                continue
            if backing.serial <= since and not backing.processes:
                continue  # made by a fixture outside this test, which starts no gateway itself
        del _backings[key]
        services.drop_postgres_database(backing.database)
        services.delete_redis_prefix(backing.redis_prefix)
