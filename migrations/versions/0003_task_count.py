"""Task counts: how many tasks each user has, for MAX_TASKS_PER_USER.

One new table, nothing else changes. A user gets a row, counted from their tasks, at the
first create that needs it, so an existing database needs no backfill here. Plain
SQLAlchemy types, as in 0001_initial.

Revision ID: 0003_task_count
Revises: 0002_refresh_tokens
Create Date: 2026-12-02 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_task_count"
down_revision: str | Sequence[str] | None = "0002_refresh_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as models.Id


def upgrade() -> None:
    op.create_table(
        "taskcount",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("taskcount")
