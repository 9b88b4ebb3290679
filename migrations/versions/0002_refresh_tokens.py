"""Refresh tokens: a token family per login session, and the SHA-256 of each refresh token.

Two new tables, nothing else changes: existing rows stay as they are. Plain SQLAlchemy
types, as in 0001_initial, so that the DDL stays what it is when the app's types change.
Batch operations for the indexes, as render_as_batch writes them, which SQLite needs for
any later change to these tables.

Revision ID: 0002_refresh_tokens
Revises: 0001_initial
Create Date: 2026-12-01 23:11:53
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_refresh_tokens"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as models.Id
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tokenfamily",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tokenfamily") as batch_op:
        batch_op.create_index("ix_tokenfamily_expires_at", ["expires_at"])
        batch_op.create_index("ix_tokenfamily_user_id", ["user_id"])

    op.create_table(
        "refreshtoken",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=32), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("used_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(["family_id"], ["tokenfamily.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("refreshtoken") as batch_op:
        batch_op.create_index("ix_refreshtoken_expires_at", ["expires_at"])
        batch_op.create_index("ix_refreshtoken_family_id", ["family_id"])


def downgrade() -> None:
    with op.batch_alter_table("refreshtoken") as batch_op:
        batch_op.drop_index("ix_refreshtoken_family_id")
        batch_op.drop_index("ix_refreshtoken_expires_at")
    op.drop_table("refreshtoken")
    with op.batch_alter_table("tokenfamily") as batch_op:
        batch_op.drop_index("ix_tokenfamily_user_id")
        batch_op.drop_index("ix_tokenfamily_expires_at")
    op.drop_table("tokenfamily")
