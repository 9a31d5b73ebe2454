"""Crash recovery: the instances table, and the process of each hold and idempotency claim.

``instances`` holds each gateway process's lease; a hold names its process and keeps
its call's usage-record fields, a running idempotency claim names its process.

The columns are nullable (existing rows: holds of jobs and settled claims, which
belong to no process), so both databases add them without rewriting the tables.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# holds is WITHOUT ROWID on SQLite; a batch that copies the table must keep that.
HOLDS_TABLE_KWARGS = {"sqlite_with_rowid": False}


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("holds", table_kwargs=HOLDS_TABLE_KWARGS) as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("call_info", sa.Text(), nullable=True))
    with op.batch_alter_table("idempotency") as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency") as batch_op:
        batch_op.drop_column("instance_id")
    with op.batch_alter_table("holds", table_kwargs=HOLDS_TABLE_KWARGS) as batch_op:
        batch_op.drop_column("call_info")
        batch_op.drop_column("instance_id")
    op.drop_table("instances")
