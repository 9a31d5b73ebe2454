"""Alembic's environment: imagerelay always hands it an open connection, inside a
transaction that holds the migration lock (storage/migrate.py), so there is no
alembic.ini, no URL here and no offline mode. On PostgreSQL that connection is the
blocking face of an asyncpg connection (``AsyncConnection.run_sync``), so nothing here
may start an event loop of its own."""

from __future__ import annotations

from alembic import context

from imagerelay.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("imagerelay runs its migrations itself: use `imagerelay db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: autogenerate writes batch operations, which
    # copy the table where SQLite needs it and are plain ALTERs on PostgreSQL.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
