"""An index on ``usage_records.created_at``: the admin dashboard and reports filter every
user's records by time, which scanned the whole table (``ix_usage_user_created`` serves
one user's pages only).

An index only: nothing a release that does not know it reads or writes changes.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_created", "usage_records", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_created", table_name="usage_records")
