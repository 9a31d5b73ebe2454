"""Schema migrations: bring a database to the schema this release's code expects.

The migrations are Alembic revisions in ``storage/migrations/versions`` (shipped in the
package; Alembic is configured here, no alembic.ini). Every change runs in ONE
transaction that first takes the migration lock, so replicas or worker processes
starting together on one database never race to create or alter it:

- SQLite: ``BEGIN IMMEDIATE`` (the database's write lock; the others wait for it),
  and SQLite's DDL is transactional, so a failed upgrade leaves nothing half done;
- PostgreSQL: ``pg_advisory_xact_lock`` in the upgrade's transaction (its DDL is
  transactional too). The migrations reach PostgreSQL through asyncpg, the gateway's
  driver, with Alembic's blocking API inside ``AsyncConnection.run_sync``.

A database made before migrations existed (by ``create_all``, no alembic_version
table) is recognised by its tables and their columns: it is stamped with the revision
whose layout it has, then upgraded like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.ext.asyncio import create_async_engine

from imagerelay.storage.db import _sqlite_path
from imagerelay.storage.schema import metadata

log = logging.getLogger("imagerelay")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
UPGRADE_COMMAND = "imagerelay db upgrade"
# Any constant: the key of PostgreSQL's advisory lock for schema changes.
_PG_LOCK_KEY = 0x696D6772  # "imgr"
# Revisions whose databases were made by create_all, before there was an alembic_version
# table, newest first: such a database is recognised by having one's exact layout.
_PRE_MIGRATION_REVISIONS = ("0002", "0001")

__all__ = [
    "SchemaBehind",
    "SchemaError",
    "SchemaState",
    "differences",
    "history",
    "new_revision",
    "prepare",
    "driver_url",
    "state",
    "upgrade",
]


class SchemaError(Exception):
    """The schema cannot be used or changed as asked; the message is one line for the operator."""


class SchemaBehind(SchemaError):
    """The database is at an older revision than this release needs."""


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  # None: no imagerelay table yet
    head: str
    stamped: bool = True  # False: made before migrations, recognised by its layout
    known: bool = True  # False: a revision this release does not have (a newer release's)

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    def describe(self) -> str:
        if self.revision is None:
            return f"empty database (no imagerelay tables); this release's schema is {self.head}"
        if not self.known:
            return (
                f"revision {self.revision}, which this release does not know (head is {self.head}): "
                "it was upgraded by a newer release"
            )
        made = "" if self.stamped else " (made before migrations; not yet stamped)"
        if self.at_head:
            return f"revision {self.revision} (head){made}"
        return f"revision {self.revision}{made}; head is {self.head}: run `{UPGRADE_COMMAND}`"


def driver_url(url: str) -> str:
    """The database URL the migrations connect with: SQLite through Python's own sqlite3
    (blocking, in the caller's thread), PostgreSQL through asyncpg, the driver the gateway
    uses (one PostgreSQL driver per process)."""
    if url.startswith("sqlite+aiosqlite:"):
        return "sqlite:" + url.split(":", 1)[1]
    for prefix in ("postgresql://", "postgres://", "postgresql+asyncpg://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from this module's blocking functions: on this thread
    when no event loop runs here (the CLI, a worker thread), else on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1, thread_name_prefix="imagerelay-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _head() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


@contextlib.contextmanager
def _sqlite_engine(url: str) -> Iterator[sa.Engine]:
    _sqlite_path(url)  # a new database file is created 0600
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"timeout": 30})

    # pysqlite would run DDL outside any transaction: take transactions over, so an
    # upgrade is one transaction, and a locking one begins with the write lock.
    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("migration_lock") else "BEGIN")

    try:
        yield engine
    finally:
        engine.dispose()


def _connected(
    url: str, fn: Callable[[sa.Connection], T], *, lock: bool = False, isolation_level: str | None = None
) -> T:
    """Call ``fn`` with a connection to the database. With ``lock``, inside one transaction
    that holds the migration lock, committed when ``fn`` returns (rolled back if it raises).

    PostgreSQL goes through SQLAlchemy's async engine on asyncpg, and ``fn`` (Alembic's
    blocking API) runs in ``AsyncConnection.run_sync``, as Alembic's asyncio cookbook does."""
    url = driver_url(url)
    if url.startswith("sqlite"):
        with _sqlite_engine(url) as engine, engine.connect() as conn:
            if not lock:
                return fn(conn)
            conn = conn.execution_options(migration_lock=True)
            with conn.begin():
                return fn(conn)

    async def run() -> T:
        engine = create_async_engine(url, poolclass=sa.NullPool)
        try:
            async with engine.connect() as conn:
                if isolation_level is not None:
                    conn = await conn.execution_options(isolation_level=isolation_level)
                if not lock:
                    return await conn.run_sync(fn)
                async with conn.begin():
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                    return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return _run_async(run)


def _locked(url: str, fn: Callable[[sa.Connection], T]) -> T:
    """``fn(connection)`` inside a transaction that holds the migration lock; commits after."""
    return _connected(url, fn, lock=True)


def _layout(conn: sa.Connection, tables: set[str] | None = None) -> dict[str, frozenset[str]]:
    """Table name -> column names (of ``tables`` only, when given)."""
    inspector = sa.inspect(conn)
    return {
        name: frozenset(column["name"] for column in inspector.get_columns(name))
        for name in inspector.get_table_names()
        if name != "alembic_version" and (tables is None or name in tables)
    }


def _layout_at(revision: str) -> dict[str, frozenset[str]]:
    """The layout the migrations give an empty database up to ``revision`` (built in a
    scratch in-memory SQLite database: the one definition of each revision is its file)."""
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), revision)
            return _layout(conn)
    finally:
        engine.dispose()


def _recognise(conn: sa.Connection) -> str | None:
    """The revision of a database with no alembic_version table: None if it has none of
    imagerelay's tables, else the pre-migration revision whose layout it has exactly."""
    layouts = {revision: _layout_at(revision) for revision in _PRE_MIGRATION_REVISIONS}
    ours = set(metadata.tables).union(*layouts.values())
    found = _layout(conn, ours)
    if not found:
        return None
    for revision, expected in layouts.items():
        if found == expected:
            return revision
    newest = layouts[_PRE_MIGRATION_REVISIONS[0]]
    missing = sorted(set(newest) - set(found)) + sorted(
        f"{name}.{column}" for name, columns in newest.items() if name in found for column in columns - found[name]
    )
    what = f"missing {', '.join(missing[:6])}" if missing else "it has tables or columns no release made"
    raise SchemaError(
        f"the database has imagerelay tables but no schema revision, and no release made its layout ({what}); "
        "restore a backup, or start on an empty database"
    )


def _state(conn: sa.Connection) -> SchemaState:
    head = _head()
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        return SchemaState(_recognise(conn), head, stamped=False)
    try:
        known = _scripts().get_revision(current) is not None
    except CommandError:
        known = False
    return SchemaState(current, head, known=known)


def _sqlite_missing(url: str) -> bool:
    """A SQLite URL whose file does not exist (reading it must not create it)."""
    url = driver_url(url)
    if not url.startswith("sqlite:///"):
        return False
    path = url.split(":///", 1)[1].split("?", 1)[0]
    return path not in ("", ":memory:") and not path.startswith("file:") and not Path(path).exists()


def state(url: str) -> SchemaState:
    """Where the database is, without changing it."""
    if _sqlite_missing(url):
        return SchemaState(None, _head())
    # PostgreSQL: one snapshot for the revision read and the tables read: under READ
    # COMMITTED a replica creating the schema between the two shows head's tables with no
    # revision, which looks like a database no release made. (SQLite's read transaction
    # already sees one snapshot; the level is not applied there.)
    return _connected(url, _state, isolation_level="REPEATABLE READ")


def upgrade(url: str, to: str = "head") -> tuple[SchemaState, SchemaState]:
    """Upgrade (creating the schema in an empty database) to revision ``to``; returns
    the states before and after."""
    return _locked(url, lambda conn: _upgrade(conn, to))


def _upgrade(conn: sa.Connection, to: str) -> tuple[SchemaState, SchemaState]:
    before = _state(conn)
    if not before.known:
        raise SchemaError(f"the database is at {before.describe()}; this release cannot upgrade it")
    cfg = _config(conn)
    try:
        if not before.stamped and before.revision is not None:
            command.stamp(cfg, before.revision)
        command.upgrade(cfg, to)
    except CommandError as exc:
        raise SchemaError(f"cannot upgrade to {to!r}: {exc}") from None
    after = _state(conn)
    if after.revision != before.revision:
        log.info("database schema upgraded from %s to %s", before.revision or "empty", after.revision)
    return before, after


def prepare(url: str, *, auto_upgrade: bool = False) -> tuple[SchemaState, SchemaState]:
    """At start-up: create the schema in an empty database; refuse one that is behind
    (:class:`SchemaBehind`, naming the command to run) unless ``auto_upgrade``; record
    the revision of a pre-migration database that already has this release's layout.
    Returns the states before and after."""
    current = state(url)
    if current.at_head and current.stamped:
        return current, current  # the usual start: one read, no lock
    return _locked(url, lambda conn: _prepare_locked(conn, auto_upgrade))


def _prepare_locked(conn: sa.Connection, auto_upgrade: bool) -> tuple[SchemaState, SchemaState]:
    current = _state(conn)  # again: another process may have changed it meanwhile
    if not current.known:
        raise SchemaError(f"the database is at {current.describe()}; run that release, or restore a backup")
    if current.at_head and current.stamped:
        return current, current
    if current.at_head:
        command.stamp(_config(conn), current.head)
        return current, _state(conn)
    if current.revision is not None and not auto_upgrade:
        raise SchemaBehind(
            f"the database schema is at revision {current.revision} and this release needs {current.head}: "
            f"back it up, then run `{UPGRADE_COMMAND}` (or set IMAGERELAY_AUTO_MIGRATE=true)"
        )
    return _upgrade(conn, "head")


def history() -> list[tuple[str, str]]:
    """(revision, first line of its description), oldest first."""
    revisions = list(_scripts().walk_revisions())
    return [(r.revision, " ".join((r.doc or "").strip().split("\n\n")[0].split())) for r in reversed(revisions)]


def differences(url: str, target: sa.MetaData = metadata) -> list[str]:
    """What differs between the database and the models (schema.py; Alembic's
    autogenerate comparison), one line each; empty when they agree."""

    def compare(conn: sa.Connection) -> list[str]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [_describe_diff(diff) for diff in compare_metadata(context, target)]

    return _connected(url, compare)


def _describe_diff(diff: Any) -> str:
    if isinstance(diff, list):  # the modifications of one column come grouped
        return "; ".join(_describe_diff(d) for d in diff)
    kind = diff[0]
    if kind.startswith("modify_"):  # (kind, schema, table, column, existing, old, new)
        return f"{kind} {diff[2]}.{diff[3]}: {diff[-2]!r} -> {diff[-1]!r}"
    if kind in ("add_column", "remove_column"):  # (kind, schema, table, column)
        return f"{kind} {diff[2]}.{diff[3].name}"
    thing = diff[-1]  # a table, an index or a constraint
    table = getattr(getattr(thing, "table", None), "name", None)
    return f"{kind} {table + ': ' if table else ''}{getattr(thing, 'name', None) or thing}"


def new_revision(message: str) -> Path:
    """For developers: write the migration from the head revision to the models in
    schema.py (autogenerated against a scratch SQLite database at head, as batch
    operations), numbered after the last one. Returns its file, to review."""
    if not (MIGRATIONS_DIR.parents[2] / "pyproject.toml").exists():
        raise SchemaError("new migrations are written into a source checkout; run this from one")
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool)
    try:
        with engine.begin() as conn:
            cfg = _config(conn)
            command.upgrade(cfg, "head")
            if not compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata):
                raise SchemaError("schema.py already matches the head migration: there is nothing to write")
            rev_id = f"{int(_head()) + 1:04d}"
            script = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
    finally:
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)
