"""Task counts: how many tasks each user has, for MAX_TASKS_PER_USER.

One new table, nothing else changes. A user gets a row, counted from their tasks, at the
first create that needs it, so an existing database needs no backfill here. Plain
SQLAlchemy types, as in 0001_initial.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_task_count"
down_revision = "0002_refresh_tokens"

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
