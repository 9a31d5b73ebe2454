"""A replica starting while another creates the schema must not mistake the fresh
schema for an unknown one (found by the three-host rehearsal: one of three hosts started
together on an empty PostgreSQL database exited with "tables but no schema revision").

The start-up check reads the schema revision, then the tables. Between two statements
under READ COMMITTED another process may commit the whole schema: the revision read
said "none", the tables read says "all of head's", and that pair looks like a database
no release made. The test forces that interleaving with a real second writer
(``migrate.upgrade`` on its own connection) at the exact moment, through SQLAlchemy's
cursor event, instead of hoping three processes hit it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from imagerelay.storage import migrate
from tests.support.services import drop_postgres_database, fresh_postgres_database


@pytest.fixture
def empty_pg() -> Iterator[str]:
    url, name = fresh_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


def test_start_check_racing_a_peer_that_creates_the_schema(empty_pg: str) -> None:
    fired: list[str] = []

    def peer_commits_schema(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        # The first look for alembic_version (it is absent): the peer now creates and
        # commits the whole schema before this reader's next statement.
        if not fired and "alembic_version" in f"{statement} {params}":
            fired.append(statement)
            migrate.upgrade(empty_pg)

    sa.event.listen(sa.engine.Engine, "after_cursor_execute", peer_commits_schema)
    try:
        before, after = migrate.prepare(empty_pg)
    finally:
        sa.event.remove(sa.engine.Engine, "after_cursor_execute", peer_commits_schema)
    assert fired, "the interleaving was not forced"
    assert after.at_head and after.stamped
    assert migrate.state(empty_pg).at_head
