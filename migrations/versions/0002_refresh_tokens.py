"""Refresh tokens: a token family per login session, and the SHA-256 of each refresh token.

Two new tables, nothing else changes: existing rows stay as they are. Plain SQLAlchemy
types, as in 0001_initial, so that the DDL stays what it is when the app's types change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_refresh_tokens"
down_revision = "0001_initial"

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as models.Id
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    # index=True: create_table makes ix_<table>_<column> for each.
    op.create_table(
        "tokenfamily",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "user_id", Id, sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("expires_at", Timestamp, nullable=False, index=True),
    )
    op.create_table(
        "refreshtoken",
        sa.Column("token_hash", sa.String(length=64), primary_key=True),
        sa.Column(
            "family_id",
            sa.String(length=32),
            sa.ForeignKey("tokenfamily.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("expires_at", Timestamp, nullable=False, index=True),
        sa.Column("used_at", Timestamp, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("refreshtoken")  # its indexes go with it
    op.drop_table("tokenfamily")
