"""Account lifecycle and job owners: users can be disabled and limited to groups, tokens
keep their last characters for lists, and a running job names its process.

All new columns are nullable or have a server default valid on both databases
(existing users are enabled), so no existing row needs a backfill.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.add_column(sa.Column("suffix", sa.String(length=8), nullable=True))
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("allowed_groups", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("allowed_groups")
        batch_op.drop_column("disabled")
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.drop_column("suffix")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("instance_id")
