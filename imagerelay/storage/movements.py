"""Money movements, each written once as a list of SQLAlchemy Core steps, and run as
one transaction on either database.

A movement is a few steps (a SELECT, UPDATE, INSERT or DELETE each) run in order; a
step may use the first row of an earlier step through :func:`ref` (NULL when that
step had no row). One definition becomes, per dialect:

- **SQLite**: the steps as statements run in order inside the caller's write
  transaction (:meth:`Movement.run_sqlite`, on the raw sqlite3 connection of
  ``storage/db.py::TransactionRunner``, with its group commit); a reference is a bound
  parameter holding the earlier step's value.
- **PostgreSQL**: ONE statement (:attr:`Movement.pg_sql`): each step a data-modifying
  CTE, a reference a scalar subquery of the earlier CTE; it answers exactly one row.
  Concurrent movements of one kind run as one batch in one transaction
  (storage/pg_batches.py: one round trip, one commit flush). A step that refers to
  another runs after it, which is how rows are locked in one order.

Both run from the same statements, so a rule (a guard, an amount) is one edit. Two rules
keep the two readings equal, because PostgreSQL's sub-statements share one snapshot
while SQLite's statements see the ones before them: **a step never reads a table an
earlier step of its movement wrote** (it uses :func:`ref` instead), and **every table is
written at most once per movement**. :class:`Movement` checks both when it is built.

Why not the ORM or the async engine for these: a movement runs on every call, and
SQLAlchemy's per-execution bookkeeping was about half the cost of a hold+settle on
SQLite (py-spy); the statements are compiled once, at import, and executed raw.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Table, bindparam, exists, literal_column, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Delete, Insert, Select, Update, visitors
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeEngine

_SEP = "__"  # a reference's parameter name: <step>__<column>
_FOUND = "found__"  # PostgreSQL: whether the result step had a row (see _compile_pg)


def ref(step: str, column: str, type_: TypeEngine[Any] | type[TypeEngine[Any]]) -> BindParameter[Any]:
    """The value of ``column`` in the first row of the earlier step ``step`` (NULL if
    it had no row)."""
    return bindparam(f"{step}{_SEP}{column}", type_=type_)


class least(GenericFunction[Any]):  # noqa: N801 - SQL function names are lower case
    """The smaller of its arguments: PostgreSQL's ``least``, SQLite's multi-argument ``min``."""

    name = "least"
    inherit_cache = True


@compiles(least, "sqlite")
def _least_sqlite(element: least, compiler: Any, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"


Statement = Select[Any] | Insert | Update | Delete


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    statement: Statement


def _inline_constants(statement: Statement) -> Statement:
    """Python constants in the statements (``x > 0``) become SQL literals: the runners
    pass only the movement's named parameters."""

    def replace(element: Any) -> ColumnElement[Any] | None:
        if isinstance(element, BindParameter) and not element.required:
            value = element.value
            assert type(value) is int, f"only integer constants are inlined, not {value!r}"
            return literal_column(str(value), element.type)
        return None

    return visitors.replacement_traverse(statement, {}, replace)  # type: ignore[call-overload,no-any-return]


def _written(statement: Statement) -> Table | None:
    if isinstance(statement, Insert | Update | Delete):
        table = statement.table
        assert isinstance(table, Table)
        return table
    return None


def _read(statement: Statement) -> set[str]:
    return {t.name for t in visitors.iterate(statement) if isinstance(t, Table)}


@dataclass(frozen=True, slots=True)
class _SqliteStep:
    name: str
    sql: str
    columns: tuple[str, ...]  # what later steps may refer to (RETURNING or the SELECT list)
    keys: tuple[str, ...]  # their parameter names, <step>__<column>


class Movement:
    """A money movement: its steps, compiled for SQLite and PostgreSQL.

    ``result``: the step whose first row the movement returns (None: it returns
    nothing). ``batch_order``: on PostgreSQL, concurrent runs of this movement share one
    transaction (storage/pg_batches.py), in the order of these parameters' values; they
    must name the rows it locks, in the order it locks them (every batched movement
    uses the same order, so two batches never deadlock). Empty: each run alone."""

    def __init__(
        self, name: str, steps: Sequence[Step], result: str | None = None, *, batch_order: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.result = result
        self.batch_order = batch_order
        names = [s.name for s in steps]
        assert len(set(names)) == len(names) and (result is None or result in names), name
        steps = [Step(s.name, _inline_constants(s.statement)) for s in steps]
        written: set[str] = set()
        for step in steps:
            # The two rules of the module docstring: what makes one reading of the steps
            # on both databases.
            table = _written(step.statement)
            assert not (_read(step.statement) - ({table.name} if table is not None else set())) & written, (
                f"{name}.{step.name} reads a table an earlier step wrote: use ref()"
            )
            if table is not None:
                assert table.name not in written, f"{name}.{step.name} writes {table.name} a second time"
                written.add(table.name)
        self._sqlite = tuple(self._compile_sqlite(s) for s in steps)
        self.pg_columns: tuple[str, ...] = ()  # the result step's columns
        self.pg_sql, self.pg_params = self._compile_pg(steps)

    # -- SQLite ----------------------------------------------------------------------
    @staticmethod
    def _compile_sqlite(step: Step) -> _SqliteStep:
        compiled = step.statement.compile(dialect=_SQLITE)
        selected: Any = (
            step.statement.selected_columns if isinstance(step.statement, Select) else step.statement._returning
        )  # noqa: SLF001 - the RETURNING list, as SQLAlchemy keeps it
        columns = tuple(str(c.key) for c in selected or ())
        return _SqliteStep(step.name, compiled.string, columns, tuple(f"{step.name}{_SEP}{c}" for c in columns))

    def run_sqlite(self, conn: sqlite3.Connection, params: dict[str, Any]) -> dict[str, Any] | None:
        """Run the steps in order on ``conn``, inside the caller's transaction. The
        steps' values are added to ``params`` (the caller's own dict: no copy per call)."""
        out: dict[str, Any] | None = None
        cursor = conn.cursor()  # one for every step: conn.execute makes a new one each time
        for step in self._sqlite:
            cursor.execute(step.sql, params)
            if not step.columns:
                continue
            row = cursor.fetchone()
            if row is None:
                params.update(dict.fromkeys(step.keys))
            else:
                params.update(zip(step.keys, row, strict=True))
                if step.name == self.result:
                    out = dict(zip(step.columns, row, strict=True))
        return out

    # -- PostgreSQL ------------------------------------------------------------------
    def _compile_pg(self, steps: Sequence[Step]) -> tuple[str, tuple[str, ...]]:
        ctes: dict[str, Any] = {}

        def replace(element: Any) -> ColumnElement[Any] | None:
            if isinstance(element, BindParameter) and _SEP in element.key:
                step, column = element.key.split(_SEP, 1)
                assert step in ctes, f"{self.name}: {element.key} refers to a later step"
                return select(ctes[step].c[column]).scalar_subquery()
            return None

        for step in steps:
            statement: Any = visitors.replacement_traverse(step.statement, {}, replace)  # type: ignore[call-overload]
            ctes[step.name] = statement.cte(step.name)
        last = ctes[self.result] if self.result is not None else None
        if last is None:
            final: Any = select(literal_column("1").label("done"))
        else:
            # Exactly one row, whatever the result step found (it has at most one): a
            # batch of movements (storage/pg_batches.py) gets one row per movement and
            # maps rows to callers by position. _FOUND says whether the step had a row.
            final = select(
                exists(select(literal_column("1")).select_from(last)).label(_FOUND),
                *(select(c).scalar_subquery().label(str(c.key)) for c in last.c),
            )
            self.pg_columns = tuple(str(c.key) for c in last.c)
        # A data-modifying CTE nobody selects from still runs, but SQLAlchemy renders
        # only the CTEs a statement refers to: name them all.
        final = final.add_cte(*ctes.values())
        compiled = final.compile(dialect=_PG)
        return compiled.string, tuple(compiled.positiontup or ())

    def pg_args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.pg_params]

    def pg_result(self, row: Any) -> dict[str, Any] | None:
        """The movement's result from the one row of :attr:`pg_sql`."""
        if self.result is None or not row[_FOUND]:
            return None
        return {name: row[name] for name in self.pg_columns}


_SQLITE = sqlite_dialect.dialect(paramstyle="named")
_PG = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect __init__ is unannotated
