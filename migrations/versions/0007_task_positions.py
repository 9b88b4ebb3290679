"""Task positions: each task's place in its user's own order (sort=position), unique per user,
and an index that counts read alone.

Existing tasks get their places in their creation order, 2**20 apart, as new tasks do.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_task_positions"
down_revision = "0006_task_versions"

GAP = 2**20  # as routes/task_rules.py's POSITION_GAP


def upgrade() -> None:
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute(
        f"UPDATE task SET position = ranked.place * {GAP} FROM (SELECT id, row_number() OVER "
        "(PARTITION BY user_id ORDER BY created_at, id) AS place FROM task) AS ranked "
        "WHERE ranked.id = task.id"
    )
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("position", existing_type=sa.BigInteger(), nullable=False)
        batch.create_unique_constraint("uq_task_user_position", ["user_id", "position"])
        batch.create_index("ix_task_user_completed_due", ["user_id", "completed", "due_date"])


def downgrade() -> None:
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index("ix_task_user_completed_due")
        batch.drop_constraint("uq_task_user_position", type_="unique")
        batch.drop_column("position")
