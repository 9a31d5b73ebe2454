"""Alembic migrations of the database schema (storage/migrate.py runs them; see
docs/migrations.md for how to add one)."""
