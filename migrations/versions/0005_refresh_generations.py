"""Refresh-token generations: each refresh token's depth in its family's chain, and each
family's newest, so that a pair issued in the grace period dies once the family moves on.

Two new columns, 0 by default: every existing token and family starts at generation 0, so
a family's unused token rotates as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_refresh_generations"
down_revision = "0004_better_auth"

TABLES = ("tokenfamily", "refreshtoken")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            generation = sa.Column("generation", sa.Integer(), server_default="0", nullable=False)
            batch.add_column(generation)


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("generation")
