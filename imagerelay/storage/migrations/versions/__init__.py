"""One file per schema revision, in order (Alembic skips this file)."""
