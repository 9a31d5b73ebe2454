"""SQLite group commit: transactions that share one COMMIT stay independent."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from imagerelay.storage.db import TransactionRunner

INSERT = text("INSERT INTO t (k, v) VALUES (:k, :v)")
COUNT = text("SELECT count(*) FROM t")


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    path = tmp_path / "g.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    r = TransactionRunner(f"sqlite:///{path}")
    yield r, path
    r.close()


def _insert(conn: Any, k: str, v: int) -> int:
    conn.execute(INSERT, {"k": k, "v": v})
    return v


def _insert_then_fail(conn: Any, k: str) -> None:
    conn.execute(INSERT, {"k": k, "v": 0})
    raise LookupError(k)


def _insert_then_roll_back(conn: Any, k: str) -> str:
    conn.execute(INSERT, {"k": k, "v": 0})
    conn.rollback()
    return "rolled back"


def rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT k, v FROM t").fetchall())


async def test_a_batch_commits_together_and_each_outcome_is_its_own(runner: Any) -> None:
    r, path = runner
    results = await asyncio.gather(
        r.run(_insert, "a", 1),
        r.run(_insert_then_fail, "b"),
        r.run(_insert, "c", 3),
        r.run(_insert_then_roll_back, "d"),
        r.run(_insert, "a", 9),  # duplicate key: fails alone
        r.run(_insert, "e", 5),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 3 and results[3] == "rolled back" and results[5] == 5
    assert isinstance(results[1], LookupError)
    assert isinstance(results[4], sqlite3.IntegrityError)
    assert rows(path) == {"a": 1, "c": 3, "e": 5}


async def test_the_first_of_a_turn_runs_at_once_and_the_rest_are_batched(runner: Any) -> None:
    r, path = runner
    first = asyncio.ensure_future(r.run(_insert, "w", 0))
    doomed = asyncio.ensure_future(r.run(_insert, "x", 1))
    kept = asyncio.ensure_future(r.run(_insert, "y", 2))
    await asyncio.sleep(0)  # all three started: the first ran inline, two are queued for the next turn
    assert first.done() and not kept.done()
    doomed.cancel()
    assert await kept == 2
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert rows(path) == {"w": 0, "y": 2}  # the caller cancelled while queued never ran


async def test_a_locked_database_is_waited_for_on_a_thread(runner: Any) -> None:
    r, path = runner
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (k, v) VALUES ('held', 0)")
    pending = asyncio.gather(r.run(_insert, "p", 1), r.run(_insert_then_fail, "q"), return_exceptions=True)
    await asyncio.sleep(0.2)
    assert not pending.done()  # queued behind the other connection's lock, loop not blocked
    other.execute("COMMIT")
    other.close()
    done = await pending
    assert done[0] == 1 and isinstance(done[1], LookupError)
    assert rows(path) == {"held": 0, "p": 1}


def _roll_back_then_insert(conn: Any, k: str) -> str:
    conn.execute(INSERT, {"k": f"{k}-undone", "v": 0})
    conn.rollback()
    conn.execute(INSERT, {"k": k, "v": 7})
    return k


async def test_a_transaction_alone_in_its_commit_is_as_independent_as_a_batched_one(runner: Any) -> None:
    """One at a time, every run is alone in its commit (no savepoint): a failure still
    leaves nothing, and a rollback undoes what came before it and keeps what follows."""
    r, path = runner
    assert await r.run(_insert, "a", 1) == 1
    with pytest.raises(LookupError):
        await r.run(_insert_then_fail, "b")
    with pytest.raises(sqlite3.IntegrityError):
        await r.run(_insert, "a", 9)
    assert await r.run(_insert_then_roll_back, "c") == "rolled back"
    assert await r.run(_roll_back_then_insert, "d") == "d"
    assert await r.run(_insert, "e", 5) == 5
    assert rows(path) == {"a": 1, "d": 7, "e": 5}
