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
  CTE, a reference a scalar subquery of the earlier CTE. One round trip in autocommit,
  and a hot balance row is locked only while that statement runs and commits. A step
  that refers to another runs after it, which is how rows are locked in one order.

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

from sqlalchemy import BindParameter, ColumnElement, Table, bindparam, literal_column, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Delete, Insert, Select, Update, visitors
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeEngine

_SEP = "__"  # a reference's parameter name: <step>__<column>


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
    nothing)."""

    def __init__(self, name: str, steps: Sequence[Step], result: str | None = None) -> None:
        self.name = name
        self.result = result
        names = [s.name for s in steps]
        assert len(set(names)) == len(names) and (result is None or result in names), name
        steps = [Step(s.name, _inline_constants(s.statement)) for s in steps]
        written: set[str] = set()
        for step in steps:
            # The two rules of the module docstring: what makes one reading of the steps
            # on both databases.
            table = _written(step.statement)
            assert not (_read(step.statement) - ({table.name} if table is not None else set())) & written, (
                f"{name}.{step.name} reads a table an earlier step wrote: use ref()")
            if table is not None:
                assert table.name not in written, f"{name}.{step.name} writes {table.name} a second time"
                written.add(table.name)
        self._sqlite = tuple(self._compile_sqlite(s) for s in steps)
        self.pg_sql, self.pg_params = self._compile_pg(steps)

    # -- SQLite ----------------------------------------------------------------------
    @staticmethod
    def _compile_sqlite(step: Step) -> _SqliteStep:
        compiled = step.statement.compile(dialect=_SQLITE)
        selected: Any = (step.statement.selected_columns if isinstance(step.statement, Select)
                         else step.statement._returning)  # noqa: SLF001 - the RETURNING list, as SQLAlchemy keeps it
        columns = tuple(str(c.key) for c in selected or ())
        return _SqliteStep(step.name, compiled.string, columns, tuple(f"{step.name}{_SEP}{c}" for c in columns))

    def run_sqlite(self, conn: sqlite3.Connection, params: dict[str, Any]) -> dict[str, Any] | None:
        """Run the steps in order on ``conn``, inside the caller's transaction. The
        steps' values are added to ``params`` (the caller's own dict: no copy per call)."""
        out: dict[str, Any] | None = None
        for step in self._sqlite:
            cursor = conn.execute(step.sql, params)
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
        final = select(*last.c) if last is not None else select(literal_column("1").label("done"))
        # A data-modifying CTE nobody selects from still runs, but SQLAlchemy renders
        # only the CTEs a statement refers to: name them all.
        final = final.add_cte(*ctes.values())
        compiled = final.compile(dialect=_PG)
        return compiled.string, tuple(compiled.positiontup or ())

    def pg_args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.pg_params]


_SQLITE = sqlite_dialect.dialect(paramstyle="named")
_PG = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect __init__ is unannotated
