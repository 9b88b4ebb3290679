"""Task versions and idempotency keys: each task's version, which every change to it raises
(its ETag), and the Idempotency-Keys of creates with the answers they got.

Existing tasks start at version 1; the new table starts empty.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_task_versions"
down_revision = "0005_refresh_generations"

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as models.Id
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "idempotencykey",
        sa.Column("user_id", Id, sa.ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_hash", sa.String(length=64), primary_key=True),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("answer", sa.String(), nullable=True),
        sa.Column("location", sa.String(length=300), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("idempotencykey")
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("version")
