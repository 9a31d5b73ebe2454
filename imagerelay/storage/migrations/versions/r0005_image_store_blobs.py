"""The ``database`` image store: a table of object chunks (imagerelay/blobs/database.py).

A new table only: nothing existing changes, and an empty table is valid for every
release that does not know it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_chunks",
        sa.Column("area", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("area", "key", "seq"),
    )
    op.create_index("ix_blob_chunks_area_expires_at", "blob_chunks", ["area", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_blob_chunks_area_expires_at", table_name="blob_chunks")
    op.drop_table("blob_chunks")
